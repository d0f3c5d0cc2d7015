"""The one dispatch point for everything a participant types, logged in or not.

Front doors hand each decoded line to :meth:`Dispatcher.dispatch` (or, before a login,
:meth:`Dispatcher.dispatch_login`); one parser reads it, the command tables say what it
means, and this is the one place where a domain error becomes an ``error`` event.

A command may return a Deferred (a nickname claim or a login checked elsewhere): the
dispatcher hands it back, and the connection reads nothing more until it has fired, so
one connection's lines are acted on in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_chat.core.errors import (
    BadArguments,
    ChatError,
    LoginRequired,
    NotNeeded,
    UnknownCommand,
)
from twisted_chat.core.events import Bye, Error, Help
from twisted_chat.core.interfaces import ILoginSession, IParticipant
from twisted_chat.core.sanitize import clean_text

if TYPE_CHECKING:  # the service imports this module for the welcome's command list
    from twisted_chat.core.service import ChatService, Member


@dataclass(frozen=True)
class Command:
    usage: str
    help: str
    run: Callable[[ChatService, Member, str], defer.Deferred[None] | None]
    # The short form the welcome lists (the usage, unless that is too long for it).
    brief: str = ""

    def __post_init__(self) -> None:
        if not self.brief:
            object.__setattr__(self, "brief", self.usage)


def _need(args: str, usage: str) -> str:
    if not args:
        raise BadArguments(f"usage: {usage}")
    return args


def _nick(svc: ChatService, m: Member, args: str) -> defer.Deferred[None] | None:
    return svc.set_nick(m, _need(args, "/nick NAME"))


def _join(svc: ChatService, m: Member, args: str) -> None:
    name = _need(args, "/join #room")
    if " " in name:
        raise BadArguments("usage: /join #room (room names have no spaces)")
    svc.join(m, name)


def _part(svc: ChatService, m: Member, args: str) -> None:
    # The first word is the room when it starts with '#' or names a room you are in
    # (``/join ops`` works without '#', so ``/part ops`` must too); otherwise a reason.
    first, _, rest = args.partition(" ")
    room: str | None = None
    reason = args
    if first.startswith("#") or (first and svc.is_member_of(m, first)):
        room, reason = first, rest
    svc.part(m, room, reason.strip())


def _rooms(svc: ChatService, m: Member, args: str) -> None:
    if " " in args:
        raise BadArguments("usage: /rooms [TEXT] (room names have no spaces)")
    svc.list_rooms(m, args or None)


def _who(svc: ChatService, m: Member, args: str) -> None:
    svc.who(m, args or None)


def _msg(svc: ChatService, m: Member, args: str) -> None:
    nick, _, text = args.partition(" ")
    if not nick or not text.strip():
        raise BadArguments("usage: /msg NICK text")
    svc.private(m, nick, text)


def _me(svc: ChatService, m: Member, args: str) -> None:
    svc.act(m, _need(args, "/me action"))


HISTORY_USAGE = "/history [#room|NICK] [N]"
HISTORY_MAX = 200


def _history(svc: ChatService, m: Member, args: str) -> defer.Deferred[None]:
    usage = f"usage: {HISTORY_USAGE} (N: how many lines, at most {HISTORY_MAX} are shown)"
    target: str | None = None
    n: int | None = None
    for word in args.split():
        if word.lstrip("+-").isdecimal():  # a number, in either place
            if n is not None or int(word) < 1:
                raise BadArguments(usage)
            n = min(int(word), HISTORY_MAX)
        elif target is None:
            target = word
        else:
            raise BadArguments(usage)
    return svc.show_history(m, target, n)


def _ping(svc: ChatService, m: Member, args: str) -> None:
    svc.ping(m, args)


def parse_format(args: str) -> str:
    """The format name ``/format NAME`` asks for; whether it exists is the participant's
    to say (``IParticipant.set_format``), as front doors hold the renderers."""
    return _need(args, "/format json|text").strip().lower()


def _format(svc: ChatService, m: Member, args: str) -> None:
    svc.set_format(m, parse_format(args))


def _help(svc: ChatService, m: Member, args: str) -> None:
    kept = svc.history.enabled  # /history only where history is kept
    shown = [(c.usage, c.help) for c in _UNIQUE if kept or c is not COMMANDS["history"]]
    m.participant.deliver(Help(ts=svc.clock.seconds(), commands=shown))


def _login(svc: ChatService, m: Member, args: str) -> None:
    if m.logged_in:
        raise NotNeeded(f"you are already logged in as {m.nick}")
    raise NotNeeded("this server has no logins; choose a nickname with /nick NAME")


def _quit(svc: ChatService, m: Member, args: str) -> None:
    svc.quit(m, args)


COMMANDS: dict[str, Command] = {
    "nick": Command("/nick NAME", "choose or change your nickname", _nick),
    "join": Command("/join #room", "join a room (created if new) and talk there", _join),
    "part": Command(
        "/part [#room] [reason]",
        "leave a room (default: the current one)",
        _part,
        brief="/part [#room]",
    ),
    "rooms": Command(
        "/rooms [TEXT]",
        "the largest rooms and how many are in each (TEXT: only names containing it)",
        _rooms,
        brief="/rooms",
    ),
    "who": Command("/who [#room]", "list the members of a room", _who),
    "msg": Command("/msg NICK text", "send a private message", _msg),
    "me": Command("/me action", "describe an action, shown as: * NICK action", _me),
    "history": Command(
        HISTORY_USAGE,
        f"earlier messages of a room, before the oldest you were shown (N: up to "
        f"{HISTORY_MAX}); NICK: your private messages with NICK, where they are kept",
        _history,
        brief="/history",
    ),
    "ping": Command("/ping [token]", "heartbeat; the server answers pong [token]", _ping),
    "format": Command("/format json|text", "switch how the server writes to you", _format),
    "help": Command("/help", "show this list", _help),
    "quit": Command("/quit [reason]", "leave the chat", _quit),
}
_UNIQUE = list(COMMANDS.values())
# A logged-in member's nickname is its login name: /nick is refused, so not offered; on a
# server that keeps no history, /history is not offered either.
_WELCOME = {
    (logged_in, history): tuple(
        c.brief
        for c in _UNIQUE
        if not (logged_in and c is COMMANDS["nick"]) and (history or c is not COMMANDS["history"])
    )
    for logged_in in (False, True)
    for history in (False, True)
}
# Not listed in /help: only meaningful before logging in, which the protocol handles.
COMMANDS["login"] = Command("/login NAME PASSWORD", "log in (servers with --auth)", _login)
COMMANDS["leave"] = COMMANDS["part"]
COMMANDS["names"] = COMMANDS["who"]
COMMANDS["list"] = COMMANDS["rooms"]


def welcome_commands(logged_in: bool, history: bool = False) -> tuple[str, ...]:
    """The commands a member's welcome lists, in their short forms."""
    return _WELCOME[logged_in, history]


def parse(line: str) -> tuple[str | None, str]:
    """``(command, arguments)`` for ``/command arguments``, ``(None, text)`` for talk.

    What decides a command is what a reader would see: a stray key (Ctrl-L, an arrow
    key's escape) or a space before "/msg bob secret" must not turn it into a message
    for the whole room.  ``//text`` says "/text".
    """
    line = line.rstrip()
    visible = clean_text(line).lstrip()
    if visible.startswith("/"):
        line = visible
    if line.startswith("//"):
        return None, line[1:]
    if line.startswith("/"):
        name, _, args = line[1:].partition(" ")
        return name.lower(), args.strip()
    return None, line


def _before_login(
    svc: ChatService, session: ILoginSession, args: str, command: str
) -> defer.Deferred[None] | None:
    if command == "login":
        name, _, password = args.partition(" ")
        if not name or not password:
            raise LoginRequired("usage: /login NAME PASSWORD")
        return session.login(name, password)
    if command == "format":
        session.set_format(parse_format(args))
        session.prompt()  # the login prompt again, now in the format asked for
    elif command == "ping":
        session.deliver(svc.pong(args))
    elif command == "quit":
        svc.tally.disconnect("quit")
        session.close(Bye(ts=svc.clock.seconds(), reason="you quit"))
    return None


# What a connection may do before it has logged in (servers with --auth).
LOGIN_COMMANDS = ("login", "format", "ping", "quit")


class Dispatcher:
    log = Logger()

    def __init__(self, service: ChatService) -> None:
        self.service = service

    def dispatch(self, member: Member, line: str) -> defer.Deferred[None] | None:
        """Act on one line; never raises, whatever the line holds.

        Returns the command's Deferred when it has one (the caller waits for it).
        """
        if not line.strip() or not member.present:
            return None
        command, args = parse(line)
        try:
            if command is None:
                self.service.say(member, args)
                return None
            found = COMMANDS.get(command)
            if found is None:
                shown = clean_text(command)[:30]
                raise UnknownCommand(
                    f"unknown command /{shown}; type /help for the list "
                    "(start a line with // to say something beginning with /)"
                )
            result = found.run(self.service, member, args)
        except ChatError as e:
            self.report(member, e)
            return None
        except Exception:
            self.log.failure("command from {nick} failed", nick=member.nick)
            self.report(member, ChatError("internal error; the server has logged it"))
            return None
        if isinstance(result, defer.Deferred):
            return result.addErrback(self._failed, member.participant, member.nick)
        return None

    def dispatch_login(self, session: ILoginSession, line: str) -> defer.Deferred[None] | None:
        """Act on one line from a connection that has not logged in yet."""
        if not line.strip():
            return None
        command, args = parse(line)
        try:
            if command not in LOGIN_COMMANDS:
                raise LoginRequired("log in first: /login NAME PASSWORD")
            assert command is not None
            result = _before_login(self.service, session, args, command)
        except ChatError as e:
            self.tell(session, e)
            return None
        except Exception:
            self.log.failure("command before login failed")
            self.tell(session, ChatError("internal error; the server has logged it"))
            return None
        if isinstance(result, defer.Deferred):
            return result.addErrback(self._failed, session, "(logging in)")
        return None

    def _failed(self, failure: Failure, participant: IParticipant, who: str) -> None:
        """A command's Deferred failed: a domain error is told, anything else logged."""
        error = failure.value
        if not isinstance(error, ChatError):
            self.log.failure("command from {nick} failed", failure, nick=who)
            error = ChatError("internal error; the server has logged it")
        self.tell(participant, error)

    def report(self, member: Member, error: ChatError) -> None:
        """Turn a domain error into the wire error for this member."""
        if member.present:
            self.tell(member.participant, error)

    def tell(self, participant: IParticipant, error: ChatError) -> None:
        """The same, for a participant not (yet) a member: one still logging in."""
        participant.deliver(
            Error(ts=self.service.clock.seconds(), code=error.code, message=error.message)
        )
