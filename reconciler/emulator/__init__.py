"""A local DingTalk API emulator: the tests', the benchmarks' and ``--sandbox``'s DingTalk.

It speaks the legacy chat and contact (org directory) endpoints and the
v1.0 API (token, group create/update, convertToOpenConversationId, robot
messages) of ``dingtalk-api.md`` over real HTTP on one port, plus a Stream
gateway (``stream``: ``connections/open`` and a WebSocket pushing the events
its own changes cause, ``events``), with DingTalk's
own rules (``limits``, never the client's) and error codes, meters the
monthly quota (``meter``), and can inject the failures a client must
survive. See docs/emulator.md.
"""

from .errors import EmulatorSetupError, ListenError
from .events import API_OPERATOR, CORP_ID, union_id
from .faults import Faults
from .org import SANDBOX_ORG, Department, Org, OrgError, Role, User, load_org
from .server import Call, EmulatorServer
from .store import load_users

__all__ = [
    "API_OPERATOR",
    "CORP_ID",
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
    "union_id",
]
