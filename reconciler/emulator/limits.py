"""DingTalk's own rules, as dingtalk-api.md states them, for the emulator alone.

The emulator deliberately does not import the client's constants
(``reconciler/rules.py``): it plays the other side of the wire, so a wrong
number in the client must meet DingTalk's number here and fail a test, not
silently move the emulator along with it. Change a value only when the
reference (``dingtalk-api.md``) changes.
"""

from __future__ import annotations

# ---- chats ------------------------------------------------------------------------------------

#: ``useridlist`` (create) and each of ``add_useridlist`` / ``del_useridlist`` (update): ids per call.
IDS_PER_CALL = 40
#: A chat holds at most this many members, owner included.
MEMBER_CAP = 1000
#: A chat name is NAME_MIN..NAME_MAX characters (characters, not bytes).
NAME_MIN = 1
NAME_MAX = 20
#: The six chat settings; each is the integer 0 or 1, omitted = 0 on create.
SETTING_FIELDS: tuple[str, ...] = (
    "chatBannedType",
    "searchable",
    "validationType",
    "mentionAllAuthority",
    "managementType",
    "showHistoryType",
)
#: ``/chat/getReadList``: ``size`` is at most this.
READ_LIST_PAGE_MAX = 100

# ---- tokens, rates, quotas --------------------------------------------------------------------

#: ``/gettoken`` announces (and the emulator enforces) this lifetime.
TOKEN_TTL_SECONDS = 7200
#: Calls per second per API for one app on a standard org (90018 above it).
QPS_PER_API = 20
#: Per egress IP, all APIs together: more than IP_LIMIT_CALLS in IP_LIMIT_WINDOW seconds
#: earns an IP ban of IP_BAN_SECONDS.
IP_LIMIT_CALLS = 10_000
IP_LIMIT_WINDOW = 20.0
IP_BAN_SECONDS = 300.0
#: Metered calls a standard org gets per month (since 2025-11-19); the directory calls are exempt.
MONTHLY_QUOTA = 5000

# ---- the org directory (contact API) ----------------------------------------------------------

#: The root department's id.
ROOT_DEPT_ID = 1
#: ``/topapi/role/simplelist``: ``size`` default and maximum.
ROLE_USERS_PAGE_DEFAULT = 20
ROLE_USERS_PAGE_MAX = 100
#: ``/topapi/role/list``: ``size`` default and maximum.
ROLE_LIST_PAGE_DEFAULT = 20
ROLE_LIST_PAGE_MAX = 200
#: ``/topapi/v2/user/getbymobile``: ``mobile`` is at most this many characters.
MOBILE_MAX = 15
