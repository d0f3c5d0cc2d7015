"""Every error a user may be told about, in one place: a stable wire code each (the
``error`` codes of docs/PROTOCOL.md) and a message fit for the user.

The dispatcher is the one place that turns these into ``error`` events; front doors and
rules raise them and never format errors themselves.
"""

from __future__ import annotations


class ChatError(Exception):
    """Base of every error a user may be told about."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownCommand(ChatError):
    code = "unknown-command"


class BadArguments(ChatError):
    code = "bad-arguments"


class NickInvalid(ChatError):
    code = "nick-invalid"


class NickReserved(ChatError):
    code = "nick-reserved"


class NickTaken(ChatError):
    code = "nick-taken"


class NoSuchNick(ChatError):
    code = "no-such-nick"


class RoomInvalid(ChatError):
    code = "room-invalid"


class NoSuchRoom(ChatError):
    code = "no-such-room"


class NotInRoom(ChatError):
    code = "not-in-room"


class TooManyRooms(ChatError):
    """The member is in ``--max-rooms-per-member`` rooms already: each costs the server."""

    code = "too-many-rooms"


class ServerRoomsFull(ChatError):
    """The server holds ``--max-rooms`` rooms: a new one is refused, existing ones still open."""

    code = "server-rooms-full"


class EmptyMessage(ChatError):
    code = "empty-message"


class NotNeeded(ChatError):
    code = "not-needed"


class UnsupportedFormat(ChatError):
    code = "bad-format"


class NetworkUnavailable(ChatError):
    """The other servers of the network could not be asked (a name claim): try again."""

    code = "network-unavailable"


# -- input, found by the rules every connection obeys ----------------------------------


class LineTooLongError(ChatError):
    code = "line-too-long"


class NotText(ChatError):
    """A binary WebSocket message: lines are text."""

    code = "not-text"


class InvalidUTF8(ChatError):
    code = "invalid-utf8"


# -- logging in (servers with --auth) -----------------------------------------------------


class LoginFailed(ChatError):
    code = "login-failed"


class LoginRefused(ChatError):
    """Too many recent failures: the password was not checked.  The connection closes."""

    code = "login-refused"


class LoginInUse(ChatError):
    code = "login-in-use"


class LoginRequired(ChatError):
    code = "login-required"


class NoHistory(ChatError):
    """The server keeps no history (or none of private messages)."""

    code = "no-history"


class HistoryUnavailable(ChatError):
    """The history store cannot be read or used; the message says why."""

    code = "history-unavailable"


class NotAllowed(ChatError):
    """A moderation command the member may not give (not an operator, a protected target)."""

    code = "not-allowed"


class Banned(ChatError):
    """A ban keeps the member out of the room."""

    code = "banned"
