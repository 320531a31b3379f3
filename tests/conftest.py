"""Shared fixtures: a real emulator on a free loopback port, and wire access bound to it."""

from __future__ import annotations

import pytest

from reconciler.emulator import EmulatorServer

from helpers import APP_KEY, APP_SECRET
from wire import Wire


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
    """Factory for wire access to the emulator (legacy generation unless ``api="v1"``), with fast backoff so
    fault tests stay quick."""
    clients = []

    def factory(**overrides) -> Wire:
        options = dict(api_base=emulator.url, max_qps=1000.0, backoff_base=0.01, backoff_cap=0.05)
        options.update(overrides)
        c = Wire(APP_KEY, APP_SECRET, **options)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client) -> Wire:
    return make_client()
