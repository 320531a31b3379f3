"""Shared fixtures: a real emulator on a free loopback port, and a client bound to it."""

from __future__ import annotations

import pytest

from reconciler.dingtalk import DingTalkClient
from reconciler.emulator import EmulatorServer

from helpers import APP_KEY, APP_SECRET


@pytest.fixture
def emulator():
    """A fresh emulator per test; accepts any user id; requires the test app's credentials."""
    server = EmulatorServer(host="127.0.0.1", port=0, app_key=APP_KEY, app_secret=APP_SECRET)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_client(emulator):
    """Factory for clients bound to the emulator, with fast backoff so fault tests stay quick."""
    clients = []

    def factory(**overrides) -> DingTalkClient:
        options = dict(api_base=emulator.url, max_qps=1000.0, backoff_base=0.01, backoff_cap=0.05)
        options.update(overrides)
        c = DingTalkClient(APP_KEY, APP_SECRET, **options)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client) -> DingTalkClient:
    return make_client()
