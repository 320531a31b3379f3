"""A local DingTalk chat API emulator: the tests', the benchmarks' and ``--sandbox``'s DingTalk.

It speaks the endpoints of ``dingtalk-api.md`` over real HTTP with the
same rules and error codes, and can inject the failures a client must survive.
"""
from .faults import Faults
from .server import Call, EmulatorServer
from .store import load_users

__all__ = ["Call", "EmulatorServer", "Faults", "load_users"]
