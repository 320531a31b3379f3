"""Wire-level test access: the transport, a backend and the directory behind one object.

The transport tests (tokens, retries, rate limits, error mapping, network failures)
were written against one client object with a method per call; :class:`Wire` keeps
that shape over the real :class:`~reconciler.backends.transport.Transport`, so each
test states the call it makes and the answer it expects, in either generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.backends import LEGACY, V1, WireCall, open_backends
from reconciler.backends import endpoints as ep


class Wire:
    """A Transport plus the backend of ``api`` and the Contacts directory over it."""

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        *,
        api: str = LEGACY,
        api_base: str,
        openapi_base: str | None = None,
        **options: Any,
    ) -> None:
        self.api = api
        self.transport, self.backend, self.directory = open_backends(
            api, app_key, app_secret, api_base=api_base, openapi_base=openapi_base or api_base, **options
        )

    # -- chats -----------------------------------------------------------------------------------
    def authenticate(self) -> None:
        self.transport.authenticate()

    def get_chat(self, chatid: str) -> dict:
        """The raw ``chat_info`` of ``/chat/get``."""
        return self.transport.call(ep.CHAT_GET, params={"chatid": chatid})["chat_info"]

    def read(self, chatid: str) -> Any:
        return self.backend.read(chatid)

    def create_chat(
        self, name: str, owner: str, userids: Sequence[str], settings: Mapping[str, int] | None = None
    ) -> str:
        """One create in this generation's dialect; returns the chatid."""
        body: dict[str, Any] = {"name": name, "owner": owner, "useridlist": list(userids)}
        if self.api == V1:
            if settings:
                body["managementOptions"] = dict(settings)
            produced = self.backend.send(WireCall(ep.GROUP_CREATE, body))
        else:
            body.update(settings or {})
            produced = self.backend.send(WireCall(ep.CHAT_CREATE, body))
        return produced["chatid"]

    def update_chat(
        self,
        chatid: str,
        *,
        name: str | None = None,
        owner: str | None = None,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        settings: Mapping[str, int] | None = None,
    ) -> None:
        """One update with exactly the given fields."""
        body: dict[str, Any] = {"chatid": chatid}
        if name is not None:
            body["name"] = name
        if owner is not None:
            body["owner"] = owner
        if add:
            body["add_useridlist"] = list(add)
        if remove:
            body["del_useridlist"] = list(remove)
        if self.api == V1:
            if settings:
                body["managementOptions"] = dict(settings)
            self.backend.send(WireCall(ep.GROUP_UPDATE, body))
        else:
            body.update(settings or {})
            self.backend.send(WireCall(ep.CHAT_UPDATE, body))

    def write(self, path: str, body: Mapping[str, Any]) -> Mapping[str, str]:
        """Send ``body`` to the endpoint at ``path`` through the backend (its answer checks included)."""
        return self.backend.send(WireCall(ep.ALL[path], body))

    # -- the directory ---------------------------------------------------------------------------
    def list_department_user_ids(self, dept_id: Any) -> list[str]:
        return self.directory.department_user_ids(dept_id)

    def list_sub_department_ids(self, dept_id: Any) -> list[int]:
        return self.directory.sub_department_ids(dept_id)

    def get_department_name(self, dept_id: Any) -> str:
        return self.directory.department_name(dept_id)

    def list_role_user_ids(self, role_id: Any) -> list[str]:
        return self.directory.role_user_ids(role_id)

    def list_roles(self) -> dict[int, str]:
        return self.directory.role_names()

    def get_user_id_by_mobile(self, mobile: str) -> str:
        return self.directory.user_id_by_mobile(mobile)

    def manager(self, **kwargs: Any) -> Any:
        """A Manager over this backend and directory."""
        from reconciler.manager import Manager

        return Manager(self.backend, self.directory, **kwargs)

    # -- the transport ---------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        return self.transport.stats

    def rate(self, path: str) -> float:
        return self.transport.rate(path)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
