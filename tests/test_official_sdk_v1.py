"""DingTalk's official v1.0 Python SDK (``alibabacloud_dingtalk``) against the emulator, unmodified.

The SDK builds its own requests (host from ``Config.endpoint``, the token in the
``x-acs-dingtalk-access-token`` header, JSON bodies, ``managementOptions`` nested) and parses errors
its own way (any 4xx/5xx body as JSON, ``code`` and ``requestid`` from it, raised as ``TeaException``).
If the emulator's v1.0 side speaks the real wire format, the SDK works against it with nothing but
the endpoint pointed at 127.0.0.1.

The last test closes the loop: a group the SDK made and changed is, to ``dtchat plan --api v1``, in sync.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from alibabacloud_dingtalk.im_1_0 import client as im_client
from alibabacloud_dingtalk.im_1_0 import models as im_models
from alibabacloud_dingtalk.oauth2_1_0 import client as oauth_client
from alibabacloud_dingtalk.oauth2_1_0 import models as oauth_models
from alibabacloud_dingtalk.robot_1_0 import client as robot_client
from alibabacloud_dingtalk.robot_1_0 import models as robot_models
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_util import models as util_models
from click.testing import CliRunner
from Tea.exceptions import TeaException

from reconciler.cli import cli
from reconciler.emulator import EmulatorServer

from helpers import SETTINGS, write_config

APP_KEY = "sdk-app-key"
APP_SECRET = "sdk-app-secret-DO-NOT-LEAK"
ROBOT_CODE = "dingsdkrobot"
USERS = ["alice", "bob", "carol", "dave", "erin"]


@pytest.fixture
def srv() -> Iterator[EmulatorServer]:
    with EmulatorServer(users=USERS, app_key=APP_KEY, app_secret=APP_SECRET, robot_code=ROBOT_CODE) as server:
        yield server


def config(srv: EmulatorServer) -> open_api_models.Config:
    """What the SDK needs to reach the emulator: host:port and plain HTTP (no region, no credentials)."""
    return open_api_models.Config(endpoint=srv.url.removeprefix("http://"), protocol="http")


@pytest.fixture
def token(srv: EmulatorServer) -> str:
    client = oauth_client.Client(config(srv))
    reply = client.get_access_token(oauth_models.GetAccessTokenRequest(app_key=APP_KEY, app_secret=APP_SECRET))
    assert reply.status_code == 200 and reply.body.expire_in == 7200
    return reply.body.access_token


@pytest.fixture
def im(srv: EmulatorServer) -> im_client.Client:
    return im_client.Client(config(srv))


def runtime() -> util_models.RuntimeOptions:
    return util_models.RuntimeOptions()


def create(im: im_client.Client, token: str, **fields: Any) -> Any:
    request = im_models.CreateGroupRequest(**fields)
    return im.create_group_with_options(
        request, im_models.CreateGroupHeaders(x_acs_dingtalk_access_token=token), runtime()
    )


def update(im: im_client.Client, token: str, **fields: Any) -> Any:
    request = im_models.UpdateGroupRequest(**fields)
    return im.update_group_with_options(
        request, im_models.UpdateGroupHeaders(x_acs_dingtalk_access_token=token), runtime()
    )


def test_the_sdk_token_is_the_same_while_valid(srv, token):
    client = oauth_client.Client(config(srv))
    again = client.get_access_token(oauth_models.GetAccessTokenRequest(app_key=APP_KEY, app_secret=APP_SECRET))
    assert again.body.access_token == token
    assert [c.endpoint for c in srv.calls] == ["/v1.0/oauth2/accessToken"] * 2
    assert APP_SECRET not in json.dumps([c.body for c in srv.calls])


def test_the_sdk_token_call_with_a_wrong_secret_raises_invalidClientIdOrSecret(srv):
    client = oauth_client.Client(config(srv))
    with pytest.raises(TeaException) as info:
        client.get_access_token(oauth_models.GetAccessTokenRequest(app_key=APP_KEY, app_secret="wrong"))
    assert info.value.code == "invalidClientIdOrSecret" and info.value.data["statusCode"] == 400


def test_the_sdk_creates_updates_and_converts_a_chat(srv, im, token):
    created = create(
        im,
        token,
        name="SDK 群",
        owner="alice",
        useridlist=["alice", "bob", "carol"],
        management_options=im_models.CreateGroupRequestManagementOptions(
            chat_banned_type=1,
            management_type=1,
            mention_all_authority=1,
            searchable=1,
            show_history_type=1,
            validation_type=1,
        ),
    )
    assert created.status_code == 200 and created.body.conversation_tag == 2
    chatid, ocid = created.body.chatid, created.body.open_conversation_id
    info = srv.chat(chatid)
    assert (info["name"], info["owner"], info["useridlist"]) == ("SDK 群", "alice", ["alice", "bob", "carol"])
    assert {k: info[k] for k in SETTINGS} == dict.fromkeys(SETTINGS, 1)

    updated = update(
        im,
        token,
        chatid=chatid,
        name="改名",
        owner="bob",
        add_useridlist=["dave", "erin"],
        del_useridlist=["carol"],
        management_options=im_models.UpdateGroupRequestManagementOptions(
            chat_banned_type=0,
            management_type=1,
            mention_all_authority=0,
            searchable=0,
            show_history_type=1,
            validation_type=0,
        ),
    )
    assert updated.status_code == 200 and updated.body.success is True
    info = srv.chat(chatid)
    assert (info["name"], info["owner"], info["useridlist"]) == ("改名", "bob", ["alice", "bob", "dave", "erin"])
    assert {k: info[k] for k in SETTINGS} == {
        "chatBannedType": 0,
        "searchable": 0,
        "validationType": 0,
        "mentionAllAuthority": 0,
        "managementType": 1,
        "showHistoryType": 1,
    }

    headers = im_models.ChatIdToOpenConversationIdHeaders(x_acs_dingtalk_access_token=token)
    converted = im.chat_id_to_open_conversation_id_with_options(chatid, headers, runtime())
    assert converted.body.open_conversation_id == ocid == srv.open_conversation_id(chatid)
    assert [c.metered for c in srv.calls] == [False, True, True, True]


def test_a_partial_sdk_management_options_resets_the_settings_it_leaves_out(srv, im, token):
    chatid = srv.seed_chat("all on", "alice", ["alice"], **dict.fromkeys(SETTINGS, 1))
    update(im, token, chatid=chatid, management_options=im_models.UpdateGroupRequestManagementOptions(searchable=1))
    assert {k: srv.chat(chatid)[k] for k in SETTINGS} == dict.fromkeys(SETTINGS, 0) | {"searchable": 1}


def test_the_sdk_robot_sends_a_sample_text_into_the_chat(srv, im, token):
    created = create(im, token, name="robot", owner="alice", useridlist=["alice", "bob"])
    robot = robot_client.Client(config(srv))
    request = robot_models.OrgGroupSendRequest(
        robot_code=ROBOT_CODE,
        open_conversation_id=created.body.open_conversation_id,
        msg_key="sampleText",
        msg_param=json.dumps({"content": "来自 SDK"}, ensure_ascii=False),
    )
    headers = robot_models.OrgGroupSendHeaders(x_acs_dingtalk_access_token=token)
    sent = robot.org_group_send_with_options(request, headers, runtime())
    assert sent.status_code == 200 and sent.body.process_query_key
    [message] = srv.robot_messages()
    assert (message["chatid"], message["robotCode"], message["msgKey"], message["params"]) == (
        created.body.chatid,
        ROBOT_CODE,
        "sampleText",
        {"content": "来自 SDK"},
    )
    assert message["processQueryKey"] == sent.body.process_query_key

    srv.set_robot(created.body.chatid, False)
    with pytest.raises(TeaException) as info:
        robot.org_group_send_with_options(request, headers, runtime())
    assert info.value.code == "invalidParameter.robotCode.empty"


def test_an_sdk_update_of_an_unknown_chat_raises_parameter_invalid(srv, im, token):
    with pytest.raises(TeaException) as info:
        update(im, token, chatid="chat00", name="x")
    error = info.value
    assert error.code == "parameter.invalid" and error.data["statusCode"] == 400
    assert error.data["requestid"] in error.message  # the SDK puts the request id in its message


def test_the_sdk_sees_the_v1_refusals_by_code(srv, im, token):
    srv.faults.no_permission = {"/v1.0/im/group/create"}
    with pytest.raises(TeaException) as info:
        create(im, token, name="n", owner="alice", useridlist=["alice"])
    assert info.value.code == "Forbidden.AccessDenied.AccessTokenPermissionDenied"
    assert "qyapi_chat_manage" in info.value.message
    srv.faults.no_permission = set()
    srv.faults.monthly_quota = 0
    with pytest.raises(TeaException) as info:
        create(im, token, name="n", owner="alice", useridlist=["alice"])
    assert info.value.code == "Forbidden.AccessDenied.ApiCountLimitForOrg" and info.value.data["statusCode"] == 403
    srv.faults.monthly_quota = -1
    srv.faults.http500_every = 1
    with pytest.raises(TeaException) as info:
        create(im, token, name="n", owner="alice", useridlist=["alice"])
    assert info.value.code == "system.error"
    srv.faults.http500_every = 0
    srv.expire_tokens()
    with pytest.raises(TeaException) as info:
        create(im, token, name="n", owner="alice", useridlist=["alice"])
    assert info.value.code == "InvalidAuthentication"
    assert srv.chats() == {}


def test_a_group_the_sdk_made_and_changed_is_in_sync_for_dtchat_plan(srv, im, token, tmp_path):
    created = create(im, token, name="SDK 群", owner="alice", useridlist=["alice", "bob", "carol"])
    chatid = created.body.chatid
    options = im_models.UpdateGroupRequestManagementOptions(
        chat_banned_type=1,
        management_type=1,
        mention_all_authority=0,
        searchable=0,
        show_history_type=1,
        validation_type=0,
    )
    update(im, token, chatid=chatid, name="改名", add_useridlist=["dave"], management_options=options)
    folder = tmp_path / "chats"
    write_config(
        folder,
        {
            "sdk-made": {
                "name": "改名",
                "owner": "alice",
                "members": ["bob", "carol", "dave"],
                "chatid": chatid,
                "settings": {
                    "muted": True,
                    "searchable": False,
                    "join_validation": False,
                    "mention_all": "everyone",
                    "management": "owner",
                    "show_history": True,
                },
            }
        },
    )
    base = ["--api", "v1", "--api-base", srv.url, "--openapi-base", srv.url]
    env = {"DINGTALK_APP_KEY": APP_KEY, "DINGTALK_APP_SECRET": APP_SECRET, "NO_COLOR": "1"}
    result = CliRunner().invoke(cli, [*base, "plan", str(folder), "--detailed-exitcode"], env=env)
    assert result.exit_code == 0, result.output
    assert "No changes. DingTalk matches the configuration." in result.stdout
