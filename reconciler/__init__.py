"""dtchat: DingTalk group chats as code."""

__version__ = "0.1.0"
