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
from twisted_chat.core.events import Bye, Error, Help, Notice
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
    # Who it is for: "all", "operators" (room operators: /help lists it, the welcome does
    # not) or "server" (server operators: only they see it in /help).
    audience: str = "all"

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


def _room_first(args: str) -> tuple[str | None, str]:
    """``[#room] rest``: the room when the first word starts with '#'."""
    first, _, rest = args.strip().partition(" ")
    if first.startswith("#"):
        return first, rest.strip()
    return None, args.strip()


def _room_nick(args: str, usage: str, tail: bool = True) -> tuple[str | None, str, str]:
    """``[#room] NICK [rest]``; without ``tail``, nothing may follow NICK."""
    room, rest = _room_first(args)
    nick, _, more = rest.partition(" ")
    if not nick or (more.strip() and not tail):
        raise BadArguments(f"usage: {usage}")
    return room, nick, more.strip()


def _topic(svc: ChatService, m: Member, args: str) -> None:
    room, text = _room_first(args)
    svc.moderator.topic(m, room, text or None)


def _lock(locked: bool) -> Callable[[ChatService, Member, str], None]:
    def run(svc: ChatService, m: Member, args: str) -> None:
        room, rest = _room_first(args)
        if rest:
            raise BadArguments(f"usage: /{'lock' if locked else 'unlock'}-topic [#room]")
        svc.moderator.lock_topic(m, room, locked)

    return run


def _kick(svc: ChatService, m: Member, args: str) -> None:
    room, nick, reason = _room_nick(args, "/kick [#room] NICK [reason]")
    svc.moderator.kick(m, room, nick, reason)


def _ban(svc: ChatService, m: Member, args: str) -> None:
    room, who, reason = _room_nick(args, "/ban [#room] NICK-or-pattern-or-address [reason]")
    svc.moderator.ban(m, room, who, reason)


def _bans(svc: ChatService, m: Member, args: str) -> None:
    room, rest = _room_first(args)
    if rest:
        raise BadArguments("usage: /bans [#room]")
    svc._tell(m, svc.moderator.bans(m, room))


def _kill(svc: ChatService, m: Member, args: str) -> None:
    nick, _, reason = args.strip().partition(" ")
    if not nick:
        raise BadArguments("usage: /kill NICK [reason]")
    svc.moderator.kill(m, nick, reason)


def _wall(svc: ChatService, m: Member, args: str) -> None:
    svc.moderator.wall(m, _need(args, "/wall text"))


def _gban(svc: ChatService, m: Member, args: str) -> None:
    target, _, reason = args.strip().partition(" ")
    if not target:
        raise BadArguments("usage: /gban ADDRESS-or-NETWORK reason")
    ban, gone = svc.moderator.gban(m, target, reason)
    svc._tell(
        m,
        Notice(
            ts=svc.clock.seconds(),
            text=f"banned {ban.network} from the server; {gone} disconnected",
        ),
    )


def _gunban(svc: ChatService, m: Member, args: str) -> None:
    target = _need(args.strip(), "/gunban ADDRESS-or-NETWORK")
    if svc.moderator.gunban(m, target):
        text = f"lifted the server ban on {target}"
    else:
        text = f"no server ban on {target} (/gbans lists them)"
    svc._tell(m, Notice(ts=svc.clock.seconds(), text=text))


def _gbans(svc: ChatService, m: Member, args: str) -> None:
    svc._tell(m, svc.moderator.network_bans(m))


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
    server_op = svc.moderator.is_server_operator(m)
    shown = [
        (c.usage, c.help)
        for c in _UNIQUE
        if (kept or c is not COMMANDS["history"])
        and (c.audience != "server" or server_op)
        and not (m.logged_in and c is COMMANDS["nick"])  # its name is its login name
    ]
    m.participant.deliver(Help(ts=svc.clock.seconds(), commands=shown))


def _login(svc: ChatService, m: Member, args: str) -> None:
    if m.logged_in:
        raise NotNeeded(f"you are already logged in as {m.nick}")
    raise NotNeeded("this server has no logins; choose a nickname with /nick NAME")


def _quit(svc: ChatService, m: Member, args: str) -> None:
    svc.quit(m, args)


def _member_command(
    usage: str, help: str, act: Callable[[ChatService, Member, str | None, str], None]
) -> Command:
    """An operators' ``/command [#room] NICK`` acting on one member (or pattern) of a room."""

    def run(svc: ChatService, m: Member, args: str) -> None:
        room, nick, _ = _room_nick(args, usage, tail=False)
        act(svc, m, room, nick)

    return Command(usage, help, run, audience="operators")


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
    "topic": Command(
        "/topic [#room] [text]",
        "show the room's topic, or set it (- clears it; once locked, operators only)",
        _topic,
        brief="/topic",
    ),
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
    "op": _member_command(
        "/op [#room] NICK",
        "make a member a room operator",
        lambda svc, m, room, nick: svc.moderator.op(m, room, nick, True),
    ),
    "deop": _member_command(
        "/deop [#room] NICK",
        "take operator status away",
        lambda svc, m, room, nick: svc.moderator.op(m, room, nick, False),
    ),
    "kick": Command(
        "/kick [#room] NICK [reason]", "put a member out of the room", _kick, audience="operators"
    ),
    "mute": _member_command(
        "/mute [#room] NICK",
        "let a member read but not talk here",
        lambda svc, m, room, nick: svc.moderator.mute(m, room, nick, True),
    ),
    "unmute": _member_command(
        "/unmute [#room] NICK",
        "let a muted member talk again",
        lambda svc, m, room, nick: svc.moderator.mute(m, room, nick, False),
    ),
    "ban": Command(
        "/ban [#room] NICK-or-pattern-or-address [reason]",
        "keep someone out (by nickname or a pattern like spam*, login name and address)",
        _ban,
        audience="operators",
    ),
    "unban": _member_command(
        "/unban [#room] NICK-or-pattern-or-address",
        "lift a ban",
        lambda svc, m, room, who: svc.moderator.unban(m, room, who),
    ),
    "bans": Command("/bans [#room]", "list the room's bans", _bans, audience="operators"),
    "lock-topic": Command(
        "/lock-topic [#room]",
        "only operators may change the topic",
        _lock(True),
        audience="operators",
    ),
    "unlock-topic": Command(
        "/unlock-topic [#room]",
        "anyone here may change the topic",
        _lock(False),
        audience="operators",
    ),
    "kill": Command(
        "/kill NICK [reason]", "disconnect someone from the server", _kill, audience="server"
    ),
    "gban": Command(
        "/gban ADDRESS-or-NETWORK reason",
        "ban an address or network (203.0.113.0/24) from the whole server",
        _gban,
        audience="server",
    ),
    "gunban": Command(
        "/gunban ADDRESS-or-NETWORK", "lift a server ban", _gunban, audience="server"
    ),
    "gbans": Command("/gbans", "list the server's bans", _gbans, audience="server"),
    "wall": Command("/wall text", "a notice to everyone on the server", _wall, audience="server"),
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
        if c.audience == "all"
        and not (logged_in and c is COMMANDS["nick"])
        and (history or c is not COMMANDS["history"])
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
