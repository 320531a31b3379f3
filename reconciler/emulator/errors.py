"""Why the emulator cannot start as asked: one class, so its command can report it in one line.

A ``ValueError`` (bad files and options are bad values) and an ``OSError`` for
the address, so code that predates this class keeps catching what it caught.
"""

from __future__ import annotations


class EmulatorSetupError(ValueError):
    """A users, org or data file that cannot be used, or options that contradict each other."""


class ListenError(OSError):
    """The emulator cannot listen on its address; ``str()`` is a sentence for people, not ``[Errno 98]``."""
