"""DingTalk's events over Stream mode, through DingTalk's own SDK (``dingtalk-stream``, the ``watch`` extra).

The SDK opens the outbound connection (``POST /v1.0/gateway/connections/open``, then a WebSocket), routes
frames and sends the acks; this module points it at ``--openapi-base``, runs it on its own thread and
event loop, hands each event over (the handling runs elsewhere; waiting for it holds no thread), and acks
only once it is done (200 when handled, a failure code otherwise, so DingTalk redelivers it). Opening the
connection is retried with exponential backoff, one log line per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..errors import DtchatError
from .redact import RedactingFilter, register_secret

log = logging.getLogger("reconciler.stream")

GATEWAY_PATH = "/v1.0/gateway/connections/open"
#: Reconnect waits: first, doubling to at most.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
INSTALL_HINT = "pip install 'dingtalk-chat-reconciler[watch]' (the dtchat[watch] extra)"

#: ``submit(event_type, event_id, data)``: a future that is True once the event is handled (then it is
#: acknowledged), False to have DingTalk deliver it again. Waiting on it holds no thread.
Handler = Callable[[str | None, str | None, Any], "Future[bool]"]


class _SdkLines(logging.Filter):
    """The SDK's own log, made to fit watch's: a lost connection or a failed open is said once, by watch.

    The SDK logs a dropped connection (``[start] network exception``) and a failed open (``open connection
    failed``) as errors; watch logs the reconnect (and each failed open) in one line of its own, so those
    become INFO (shown with -v). Its ``unknown exception`` (a failed WebSocket connect) is logged with a
    stray argument and a traceback: one warning line instead.
    """

    QUIET = ("[start] network exception", "open connection failed")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if record.levelno > logging.INFO and msg.startswith(self.QUIET):
            record.levelno, record.levelname = logging.INFO, "INFO"
        elif msg == "unknown exception":
            exc = record.exc_info[1] if record.exc_info else None
            record.msg = "the Stream connection failed (%s); the SDK tries again in 3 s"
            record.args = (str(exc) or type(exc).__name__,) if exc is not None else ("unknown error",)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def sdk_logger() -> logging.Logger:
    """The logger handed to the SDK: its lines fitted to watch's (``_SdkLines``), then redacted."""
    sdk_log = logging.getLogger("reconciler.stream.sdk")
    if not any(isinstance(f, _SdkLines) for f in sdk_log.filters):
        sdk_log.addFilter(_SdkLines())  # first: the line it writes is redacted too (an error may quote the URL)
        sdk_log.addFilter(RedactingFilter())
    return sdk_log


class StreamUnavailable(DtchatError):
    """The Stream SDK is not installed."""


def require_sdk() -> None:
    """One line, before anything else, when the ``watch`` extra is missing."""
    try:
        import dingtalk_stream  # noqa: F401
    except ImportError:
        raise StreamUnavailable(f"dtchat watch needs DingTalk's Stream SDK (dingtalk-stream): {INSTALL_HINT}") from None


class StreamListener:
    """The SDK's client on a daemon thread; ``stop()`` ends it (events in flight are not acked: redelivered)."""

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        openapi_base: str,
        handle: Handler,
    ) -> None:
        require_sdk()
        register_secret(app_secret)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(app_key, app_secret, openapi_base.rstrip("/"), handle), daemon=True
        )
        self.connections = 0

    def start(self) -> StreamListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Hand over no more events (those still arriving are not acknowledged: DingTalk redelivers them)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self, app_key: str, app_secret: str, base: str, handle: Handler) -> None:
        import dingtalk_stream
        from dingtalk_stream import AckMessage

        listener = self
        sdk_log = sdk_logger()

        class Events(dingtalk_stream.EventHandler):
            async def process(self, event: Any) -> tuple[int, str]:
                if listener.stopping:
                    return AckMessage.STATUS_SYSTEM_EXCEPTION, "shutting down; redeliver"
                headers = event.headers
                try:
                    done = await asyncio.wrap_future(handle(headers.event_type, headers.event_id, event.data))
                except Exception as exc:  # a bug in handling: not acknowledged, so not lost
                    log.warning("event %s not handled: %s", headers.event_id, exc)
                    done = False
                if done:
                    return AckMessage.STATUS_OK, "OK"
                return AckMessage.STATUS_SYSTEM_EXCEPTION, "not handled; redeliver"

        # The SDK reads its gateway URL from DINGTALK_OPENAPI_ENDPOINT once, at import, and names it as
        # ``DingTalkStreamClient.OPEN_CONNECTION_API`` (the class, not ``self``): a subclass attribute alone
        # is ignored, so the SDK's own class is pointed at --openapi-base (this process runs one client).
        dingtalk_stream.DingTalkStreamClient.OPEN_CONNECTION_API = base + GATEWAY_PATH

        class Client(dingtalk_stream.DingTalkStreamClient):
            OPEN_CONNECTION_API = base + GATEWAY_PATH

            def open_connection(self) -> dict | None:
                wait = BACKOFF_FIRST
                while not listener.stopping:
                    connection = super().open_connection()
                    if connection and connection.get("endpoint") and connection.get("ticket"):
                        register_secret(str(connection["ticket"]))
                        listener.connections += 1
                        if listener.connections == 1:
                            log.info("connected to DingTalk's Stream gateway")
                        else:
                            log.warning("the Stream connection was lost; reconnected")
                        return connection
                    log.warning("cannot open the Stream connection at %s; retrying in %.0f s", base, wait)
                    listener._stop.wait(wait)
                    wait = min(BACKOFF_MAX, wait * 2)
                return None

        client = Client(dingtalk_stream.Credential(app_key, app_secret), logger=sdk_log)
        client.register_all_event_handler(Events())
        while not self._stop.is_set():
            try:
                asyncio.run(client.start())
            except Exception as exc:  # the SDK's loop should not end; if it does, start it again
                log.warning("the Stream client stopped (%s); restarting", type(exc).__name__)
                time.sleep(1)
