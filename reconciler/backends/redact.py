"""Scrub secrets from text before it is logged or put in an exception.

The access token travels in every URL and the app secret in the /gettoken URL,
so anything derived from a URL, a ``requests`` exception or a third-party log
line must pass through :func:`redact`.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
#: Shorter literals are not masked on their own: masking "s" would shred every message. Real app
#: secrets and tokens are 32+ characters; URLs are scrubbed by parameter name whatever the length.
MIN_SECRET_LEN = 6

_QUERY_SECRET = re.compile(r"(?i)\b(access_token|appsecret|corpsecret)=[^&\s'\"#<>)]*")
#: ``scheme://user:password@`` (or ``scheme://token@``): the whole userinfo goes, whatever its length.
#: Greedy up to the last ``@`` of the authority, as URL parsers split it.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#'\"<>]*@")
_lock = threading.Lock()
_secrets: set[str] = set()

#: Loggers that write request URLs (with their query strings) at DEBUG.
_URL_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry")


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: the form of an API base or proxy fit to print."""
    return _USERINFO.sub(lambda m: m.group(1), url)


def register_secret(secret: str) -> None:
    """Remember a literal secret (app secret, issued token) so it is masked everywhere."""
    if len(secret) >= MIN_SECRET_LEN:
        with _lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """Mask secret query parameters, URL credentials and every registered secret in ``text``."""
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={MASK}", text)
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a log record's message through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_FILTER = RedactingFilter()


def install_log_filter() -> None:
    """Attach the redacting filter to urllib3's URL-logging loggers (idempotent).

    urllib3 logs ``"GET /chat/get?access_token=... HTTP/1.1" 200`` at DEBUG; a
    user running ``-v`` with DEBUG logging would otherwise print the token.
    """
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
