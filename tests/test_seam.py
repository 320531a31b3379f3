"""One seam (design §10): nothing outside ``reconciler/backends/`` and the emulator names DingTalk's wire.

The names below are written here from dingtalk-api.md, not imported from the code: endpoint paths, body
keys and answer fields that only the wire uses, and the error codes of both generations. Words that are
also dtchat's own (``chatid``, ``name``, ``owner``, ``searchable``) are not wire-only and are not listed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reconciler"
BEHIND_THE_SEAM = (PACKAGE / "backends", PACKAGE / "emulator")

PATHS = re.compile(r"/(chat|topapi|v1\.0)/|/gettoken\b")
FIELDS = (
    "useridlist",
    "add_useridlist",
    "del_useridlist",
    "chat_info",
    "chatBannedType",
    "validationType",
    "mentionAllAuthority",
    "managementType",
    "showHistoryType",
    "managementOptions",
    "openConversationId",
    "conversationTag",
    "access_token",
    "accessToken",
    "x-acs-dingtalk-access-token",
    "errcode",
    "errmsg",
    "sub_code",
    "userid_list",
    "dept_id_list",
    "hasMore",
    "robotCode",
    "msgKey",
    "msgParam",
    "processQueryKey",
    "appKey",
    "appSecret",
    "appsecret",
    "ownerType",
    "extidlist",
    "add_extidlist",
    "del_extidlist",
    "expireIn",
    "expires_in",
    "request_id",
    "requestid",
    "sampleText",
    # the Stream gateway's frames and the events they carry
    "specVersion",
    "eventType",
    "eventId",
    "eventBornTime",
    "eventCorpId",
    "clientId",
    "clientSecret",
    "chat_add_member",
    "chat_remove_member",
    "chat_quit",
    "chat_update_owner",
    "chat_update_title",
    "chat_disband",
    "user_add_org",
    "user_leave_org",
    "user_modify_org",
    "user_active_org",
    "org_dept_create",
    "org_dept_modify",
    "org_dept_remove",
    "label_user_change",
)
#: The hosts: only the backends know where DingTalk is.
HOSTS = re.compile(r"(oapi|api)\.dingtalk\.com")
CODES = (
    "88",
    "33001",
    "33011",
    "33012",
    "34001",
    "34013",
    "40001",
    "40003",
    "40014",
    "40016",
    "40031",
    "40032",
    "40035",
    "40089",
    "40104",
    "42001",
    "43007",
    "45009",
    "60003",
    "60011",
    "60020",
    "60111",
    "60121",
    "90002",
    "90018",
    "90019",
    "90020",
    "400002",
)
V1_CODES = re.compile(
    r"Forbidden\.AccessDenied|parameter\.invalid|permession\.checkFailed|InvalidAuthentication|system\.(error|busy)"
    r"|invalideChatId|invalidParameter\.robotCode|ApiCountLimitForOrg|systemBusy|send\.too\.fast"
    r"|unknown\.send\.result|invalid\.openConversationId|group\.disbanded|invalidClientIdOrSecret"
)


def engine_files() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if not any(p.is_relative_to(d) for d in BEHIND_THE_SEAM)]
    assert len(files) > 20, "the scan must see the engine"
    return sorted(files)


def test_no_endpoint_wire_field_or_error_code_outside_the_backends():
    problems = []
    for path in engine_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            where = f"{path.relative_to(ROOT)}:{n}"
            if PATHS.search(line):
                problems.append(f"{where}: endpoint path: {line.strip()}")
            for field in FIELDS:
                if re.search(rf"(?<![\w-]){re.escape(field)}(?![\w-])", line):
                    problems.append(f"{where}: wire field {field}: {line.strip()}")
            for code in CODES:
                if re.search(rf"(?<![\w.-]){re.escape(code)}(?![\w.])", line):
                    problems.append(f"{where}: error code {code}: {line.strip()}")
            if V1_CODES.search(line):
                problems.append(f"{where}: v1.0 error code: {line.strip()}")
            if HOSTS.search(line):
                problems.append(f"{where}: DingTalk host: {line.strip()}")
    assert problems == [], "\n".join(problems)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The patterns are live: each kind of leak in a sample line is caught."""
    samples = [
        'x = "/chat/create"',
        'body["add_useridlist"]',
        "if code == 90020:",
        '"Forbidden.AccessDenied.X"',
        'if kind == "user_leave_org":',
        'BASE = "https://api.dingtalk.com"',
    ]
    for sample in samples:
        hit = (
            PATHS.search(sample)
            or any(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", sample) for f in FIELDS)
            or any(re.search(rf"(?<![\w.-]){re.escape(c)}(?![\w.])", sample) for c in CODES)
            or V1_CODES.search(sample)
            or HOSTS.search(sample)
        )
        assert hit, sample
