"""The monthly meter: which calls DingTalk meters, which of them it counts, and the quota they spend.

dingtalk-api.md ("The monthly quota"): every chat, im and robot call is
metered (``/chat/*`` and the ``/v1.0/`` calls); the token calls, the Stream
gateway and the contact API (``/topapi/...``) are exempt. Calls refused by
throttling or lost to the network are not counted; the reference says nothing
about other failures. The emulator's rule, chosen so a wasteful client is
caught and a client is never charged for what the API did not do:

* A metered call is **counted** when the API processed it: its answer is a
  success or a request-level error (bad parameter, chat not found, unknown
  user, robot not in the chat, ...), also when the connection is then dropped
  (``drop_after_create``, a raising ``before_reply``: the store committed).
* **Not counted**: the gateway's "every Nth" faults and IP bans, throttling,
  busy, ``system.error``, token errors, permission refusals (``no_permission``,
  new-app mode), the quota refusal itself, a wrong HTTP method and an unknown
  path. Which answer codes those are: ``UNCOUNTED_ERRCODES`` /
  ``UNCOUNTED_V1_CODES`` in ``limits.py`` (plus every v1.0 401, 403, 429, 5xx),
  so an injected ``fail_chatids`` answer is classified like a real one.
* The quota (``Faults.monthly_quota``, -1 = unlimited) is reserved before the
  call runs and given back when the call ends up not counted, so concurrent
  calls never overspend it and a refused call never costs it.
* ``exempt`` counts the calls to exempt endpoints that were processed by the
  same rule, so a test can see that directory expansion happened for free.
* **Pushes** (the Stream gateway's events) are a separate figure: the
  reference's 3,000-a-month Webhook & Stream push quota. ``pushes`` counts
  each event that is not on the exempt list when it is first delivered to a
  client (redeliveries and duplicates are not counted again);
  ``pushes_exempt`` counts the directory events (``limits.push_exempt``).
  SYSTEM frames are never counted. The push quota itself is not enforced
  (the reference does not say what an exhausted quota does to events).
"""

from __future__ import annotations

import threading
from typing import Any

from .faults import Faults
from .limits import CONTACT_API_PREFIX, METER_EXEMPT_ENDPOINTS, UNCOUNTED_ERRCODES, UNCOUNTED_V1_CODES


def is_metered(endpoint: str) -> bool:
    """True for the calls the monthly quota meters (``/chat/*`` and ``/v1.0/`` except the token and Stream)."""
    if endpoint in METER_EXEMPT_ENDPOINTS:
        return False
    return endpoint.startswith("/chat/") or endpoint.startswith("/v1.0/")


def is_exempt(endpoint: str) -> bool:
    """True for the calls DingTalk lists as exempt: token calls, the Stream gateway, the contact API."""
    return endpoint in METER_EXEMPT_ENDPOINTS or endpoint.startswith(CONTACT_API_PREFIX)


def processed(status: int, errcode: int | None, code: str | None) -> bool:
    """Did the API process a call answered like this (so that it counts)? See the module docstring."""
    if errcode is not None:
        return errcode not in UNCOUNTED_ERRCODES
    if code is not None and code in UNCOUNTED_V1_CODES:
        return False
    return status < 400 or (status not in (401, 403, 429) and status < 500)


class Meter:
    """Counted metered calls, processed exempt calls, and the quota's reservations, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metered = 0
        self._exempt = 0
        self._pushes = 0
        self._pushes_exempt = 0

    def count_push(self, exempt: bool) -> None:
        """One event delivered to a client for the first time."""
        with self._lock:
            if exempt:
                self._pushes_exempt += 1
            else:
                self._pushes += 1

    def reserve(self, faults: Faults) -> bool | None:
        """Spend one call of the quota ahead: True (spent), None (unlimited), False (used up: refuse)."""
        with self._lock:
            if faults.monthly_quota < 0:
                return None
            if faults.monthly_quota == 0:
                return False
            faults.monthly_quota -= 1
            return True

    def settle(self, endpoint: str, was_processed: bool, faults: Faults, reserved: bool | None) -> bool:
        """Count a finished call; give its reserved quota back unless it counted. Returns: it counted."""
        metered = is_metered(endpoint)
        counted = metered and was_processed
        with self._lock:
            if counted:
                self._metered += 1
            elif not metered and was_processed and is_exempt(endpoint):
                self._exempt += 1
            if reserved and not counted and faults.monthly_quota >= 0:
                faults.monthly_quota += 1
        return counted

    def snapshot(self, faults: Faults, pushes: bool = False) -> dict[str, Any]:
        """``{"metered", "exempt", "quota_left"}`` (``quota_left`` None when unlimited), and with ``pushes``
        also ``"pushes"`` and ``"pushes_exempt"``."""
        with self._lock:
            left = faults.monthly_quota
            out: dict[str, Any] = {
                "metered": self._metered,
                "exempt": self._exempt,
                "quota_left": None if left < 0 else left,
            }
            if pushes:
                out["pushes"] = self._pushes
                out["pushes_exempt"] = self._pushes_exempt
            return out

    def reset(self) -> None:
        with self._lock:
            self._metered = 0
            self._exempt = 0
            self._pushes = 0
            self._pushes_exempt = 0
