"""twistd plugin: ``twistd -n groupchat``.  Options and service live in twisted_chat.tap."""

from twisted.application.service import ServiceMaker

groupchat = ServiceMaker(
    "groupchat",
    "twisted_chat.tap",
    "A group-chat server for telnet, netcat and the groupchat client",
    "groupchat",
)
