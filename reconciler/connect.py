"""Where the API is: real DingTalk (credentials from the environment) or the embedded sandbox."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DtchatError
from .rules import DEFAULT_QPS

if TYPE_CHECKING:
    from .dingtalk import DingTalkClient

ENV_APP_KEY = "DINGTALK_APP_KEY"
ENV_APP_SECRET = "DINGTALK_APP_SECRET"
ENV_API_BASE = "DINGTALK_API_BASE"
DEFAULT_API_BASE = "https://oapi.dingtalk.com"
#: The sandbox keeps its chats (and its own state file) here, in the working directory.
SANDBOX_DIR = Path(".dtchat-sandbox")
SANDBOX_DATA = "emulator.json"


class SetupError(DtchatError):
    """Cannot talk to DingTalk: missing credentials, bad API base, sandbox data unusable."""


def credentials(env: Mapping[str, str]) -> tuple[str, str]:
    key, secret = env.get(ENV_APP_KEY, "").strip(), env.get(ENV_APP_SECRET, "").strip()
    missing = [name for name, value in ((ENV_APP_KEY, key), (ENV_APP_SECRET, secret)) if not value]
    if missing:
        raise SetupError(
            f"{' and '.join(missing)} not set: export the app's credentials, or use --sandbox to try dtchat locally"
        )
    return key, secret


@contextlib.contextmanager
def sandbox_server(folder: Path = SANDBOX_DIR) -> Iterator[str]:
    """Run the emulator in-process on a free loopback port with the sandbox org; its chats persist under ``folder``.

    The sandbox org (shipped with the emulator) matches ``examples/chats/``, so the quickstart resolves
    directory selectors, and an unknown user id fails as in real DingTalk (60121).
    """
    from .emulator import SANDBOX_ORG, EmulatorServer, EmulatorSetupError, load_org

    try:
        folder.mkdir(exist_ok=True)
        server = EmulatorServer(host="127.0.0.1", port=0, data_path=folder / SANDBOX_DATA, org=load_org(SANDBOX_ORG))
    except (OSError, EmulatorSetupError) as exc:  # an unwritable folder, a corrupt sandbox data file
        raise SetupError(f"sandbox: {exc}") from None
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _api_base(given: str | None, env: Mapping[str, str]) -> str:
    from .dingtalk.redact import redact

    base = (given or env.get(ENV_API_BASE) or DEFAULT_API_BASE).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise SetupError(f"--api-base {redact(base)!r}: must start with http:// or https://")
    return base


@contextlib.contextmanager
def connect(
    *,
    sandbox: bool = False,
    api_base: str | None = None,
    max_qps: float = DEFAULT_QPS,
    pool_size: int = 32,
    env: Mapping[str, str] | None = None,
) -> Iterator[DingTalkClient]:
    """A client for the real API or the sandbox, closed (and the sandbox stopped) on exit."""
    from .dingtalk import DingTalkClient

    env = os.environ if env is None else env
    with contextlib.ExitStack() as stack:
        if sandbox:
            base = stack.enter_context(sandbox_server())
            key, secret = "sandbox-app", "sandbox-secret"
        else:
            key, secret = credentials(env)
            base = _api_base(api_base, env)
        client = stack.enter_context(DingTalkClient(key, secret, api_base=base, max_qps=max_qps, pool_size=pool_size))
        yield client
