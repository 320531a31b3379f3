"""Where the API is and which generation to speak: real DingTalk (credentials from the environment) or the
embedded sandbox, through ``--api v1`` (the default) or ``--api legacy``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .backends import DEFAULT_API, ChatBackend, Directory, open_backends
from .backends.endpoints import DEFAULT_API_BASE, DEFAULT_OPENAPI_BASE
from .errors import DtchatError
from .rules import DEFAULT_QPS

ENV_APP_KEY = "DINGTALK_APP_KEY"
ENV_APP_SECRET = "DINGTALK_APP_SECRET"
ENV_API = "DTCHAT_API"
ENV_API_BASE = "DINGTALK_API_BASE"
#: The name DingTalk's own Stream SDK reads for the v1.0 host.
ENV_OPENAPI_BASE = "DINGTALK_OPENAPI_ENDPOINT"
ENV_ROBOT_CODE = "DTCHAT_ROBOT_CODE"
#: The sandbox keeps its chats (and its own state file) here, in the working directory.
SANDBOX_DIR = Path(".dtchat-sandbox")
SANDBOX_DATA = "emulator.json"
#: The sandbox app's robot, when DTCHAT_ROBOT_CODE does not name one (its emulator accepts any).
SANDBOX_ROBOT = "dtchat-sandbox-robot"


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
    directory selectors, and an unknown user id fails as in real DingTalk. It is a *new* app: the legacy
    chat writes are refused as DingTalk refuses them, so the sandbox shows what a company starting today sees.
    """
    from .emulator import SANDBOX_ORG, EmulatorServer, EmulatorSetupError, load_org

    try:
        folder.mkdir(exist_ok=True)
        server = EmulatorServer(
            host="127.0.0.1", port=0, data_path=str(folder / SANDBOX_DATA), org=load_org(SANDBOX_ORG), new_app=True
        )
    except (OSError, EmulatorSetupError) as exc:  # an unwritable folder, a corrupt sandbox data file
        raise SetupError(f"sandbox: {exc}") from None
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _base(given: str | None, env: Mapping[str, str], name: str, default: str, flag: str) -> str:
    from .backends.redact import redact

    base = (given or env.get(name) or default).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise SetupError(f"{flag} {redact(base)!r}: must start with http:// or https://")
    return base


@dataclass(frozen=True)
class Connection:
    """What one run talks to DingTalk through: the chat backend of the chosen generation and the directory
    (and, for ``watch``'s Stream connection, the app's credentials and the v1.0 host)."""

    backend: ChatBackend
    directory: Directory
    app_key: str = ""
    app_secret: str = field(default="", repr=False)
    openapi_base: str = ""


@contextlib.contextmanager
def connect(
    *,
    api: str = DEFAULT_API,
    sandbox: bool = False,
    api_base: str | None = None,
    openapi_base: str | None = None,
    max_qps: float = DEFAULT_QPS,
    pool_size: int = 32,
    env: Mapping[str, str] | None = None,
) -> Iterator[Connection]:
    """A connection to the real API or the sandbox, closed (and the sandbox stopped) on exit.

    One transport serves both hosts, so one token and one per-IP budget cover the whole run.
    """
    from .backends.transport import deadline_from_env

    env = os.environ if env is None else env
    try:
        deadline = deadline_from_env(env)  # DTCHAT_HTTP_DEADLINE: each request's whole time, default 60 s
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    robot_code = (env.get(ENV_ROBOT_CODE) or "").strip() or None
    with contextlib.ExitStack() as stack:
        if sandbox:
            oapi = openapi = stack.enter_context(sandbox_server())
            key, secret = "sandbox-app", "sandbox-secret"
            robot_code = robot_code or SANDBOX_ROBOT
        else:
            key, secret = credentials(env)
            oapi = _base(api_base, env, ENV_API_BASE, DEFAULT_API_BASE, "--api-base")
            openapi = _base(openapi_base, env, ENV_OPENAPI_BASE, DEFAULT_OPENAPI_BASE, "--openapi-base")
        transport, backend, directory = open_backends(
            api,
            key,
            secret,
            robot_code=robot_code,
            api_base=oapi,
            openapi_base=openapi,
            max_qps=max_qps,
            pool_size=pool_size,
            deadline=deadline,
        )
        stack.enter_context(transport)
        yield Connection(backend, directory, key, secret, openapi)
