"""groupchat: a group-chat server and terminal client on Twisted."""

__version__ = "0.1.0"
