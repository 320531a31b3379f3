"""Chats as code: load, validate and write the YAML that describes DingTalk chats.

``load_config(paths)`` is what every CI run calls first: it reports every
problem at once, each at ``file:line:col``. ``dump_config`` writes values
back as YAML that loads to the same values.
"""

from .dump import dump_config
from .issues import ConfigError, ConfigIssue
from .loader import Config, load_config
from .schema import is_chat_key
from .semantics import NOTIFY_PLACEHOLDERS

__all__ = ["Config", "ConfigError", "ConfigIssue", "NOTIFY_PLACEHOLDERS", "dump_config", "is_chat_key", "load_config"]
