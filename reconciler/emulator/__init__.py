"""A local DingTalk API emulator: the tests', the benchmarks' and ``--sandbox``'s DingTalk.

It speaks the chat and contact (org directory) endpoints of
``dingtalk-api.md`` over real HTTP with DingTalk's own rules (``limits``,
never the client's) and error codes, and can inject the failures a client
must survive. See docs/emulator.md.
"""

from .errors import EmulatorSetupError, ListenError
from .faults import Faults
from .org import SANDBOX_ORG, Department, Org, OrgError, Role, User, load_org
from .server import Call, EmulatorServer
from .store import load_users

__all__ = [
    "Call",
    "Department",
    "EmulatorServer",
    "EmulatorSetupError",
    "Faults",
    "ListenError",
    "Org",
    "OrgError",
    "Role",
    "SANDBOX_ORG",
    "User",
    "load_org",
    "load_users",
]
