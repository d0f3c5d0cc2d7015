"""Keeping rooms civil: topics, room operators, mutes, bans, and the server's operators.

The first member of a new room is its operator; when the last operator leaves, the
member present longest becomes one (``#lobby`` has none: only server operators act
there). Server operators are login names given with ``--operator``: they may do
everything a room operator may, in any room, and disconnect anyone, ban an address or a
network from the whole server, and send everyone a notice. Every action is told to the
room (or, for a server-wide one, logged).

Over a network of servers (``--backplane``) every action is checked on the acting
member's server, then published, and applied by every server (that one included) as
the network hands it back, so all apply them in one order and their replicas agree
(``replicated``); kicks and bans put a member out on its own server, through its usual
part. The room's state is also kept in the network (``snapshot``, ``restore``) for
servers that join later or come back. When the last operator leaves, the server first
by name among those with members in the room picks the heir.

A ban keeps a person out of a room by nickname (or a ``*``/``?`` pattern of nicknames),
by login name, and by the address it connected from; a mute lets a member read but not
talk, and follows its nickname and login name. A room's bans and mutes last as long as
the room; server-wide bans are kept by ``ServerBans`` (across restarts, see ``tap``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from twisted_chat.core.errors import (
    BadArguments,
    Banned,
    ChatError,
    NoSuchNick,
    NotAllowed,
    NotInRoom,
)
from twisted_chat.core.events import (
    Bans,
    Bye,
    Current,
    Disconnected,
    Moderation,
    Notice,
    Part,
    Topic,
    Wall,
)
from twisted_chat.core.names import LOBBY, NICK_MAX, room_key, skeleton, validate_room
from twisted_chat.core.sanitize import clean_text

if TYPE_CHECKING:
    from twisted_chat.core.service import ChatService, Member, Room

TOPIC_MAX = 300
REASON_MAX = 200
PATTERN_MAX = NICK_MAX + 8
WILDCARDS_MAX = 8
BANS_MAX = 100  # per room, and server-wide: every list a client can grow is bounded
MUTES_MAX = 100
WALL_MAX = 400
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Ban:
    """Who a room ban keeps out: ``pattern`` (casefolded, with ``*``/``?``) or ``nick``
    (a look-alike key), and the ``login`` and ``address`` of the member it was made for."""

    shown: str  # what /bans and /unban call it
    by: str
    reason: str = ""
    pattern: str | None = None
    nick: str | None = None
    login: str | None = None
    address: str | None = None
    who: tuple[str, int] | None = None  # the member it was made for, whatever its name
    # The pattern compiled once, here (not in fnmatch's process-wide cache, which a
    # stream of distinct patterns would fill).
    regex: re.Pattern[str] | None = None
    looks: re.Pattern[str] | None = None  # the same over look-alike keys

    def names(self, member: Member) -> bool:
        """Whether it is about this person: by name, pattern, login, or itself (not the
        address it shares with whoever else is behind it)."""
        if self.who is not None and (member.node, member.id) == self.who:
            return True
        if self.regex is not None and self.regex.match(member.nick.casefold()):
            return True
        if self.looks is not None and self.looks.match(skeleton(member.nick)):
            return True
        if self.nick is not None and skeleton(member.nick) == self.nick:
            return True
        return self.login is not None and member.logged_in and skeleton(member.nick) == self.login

    def puts_out(self, member: Member) -> bool:
        """Whom it puts out of the room when made: those it names, and, for an address
        typed (no one named), whoever is here from that address."""
        typed = self.pattern is None and self.nick is None and self.who is None
        return self.keeps_out(member) if typed else self.names(member)

    def keeps_out(self, member: Member) -> bool:
        return self.names(member) or (bool(self.address) and member.address == self.address)


@dataclass(frozen=True)
class ServerBan:
    network: Network
    by: str
    reason: str


def covers(network: Network, host: str) -> bool:
    """Whether ``host`` (an address, or an IPv6 /64 as ``rules`` counts it) is in it."""
    try:
        net = ipaddress.ip_network(host, strict=False)
    except ValueError:
        return False
    return net.version == network.version and net.subnet_of(network)  # type: ignore[arg-type]


Row = tuple[str, str, str]  # a server ban as it is kept: network, by, reason


class ServerBans:
    """Addresses and networks banned from the whole server; ``save`` keeps them (called
    with every ban, as rows, after each change), ``load`` reads them back."""

    def __init__(self, save: Callable[[list[Row]], object] | None = None) -> None:
        self.bans: dict[Network, ServerBan] = {}
        self.save = save

    def load(self, rows: Iterable[Row]) -> None:
        """Add the bans kept (a row that is not a network is skipped, and dropped at the
        next save)."""
        for network, by, reason in rows:
            try:
                ban = ServerBan(parse_network(network), str(by), str(reason))
            except ChatError:
                continue
            self.bans.setdefault(ban.network, ban)

    def add(self, ban: ServerBan) -> None:
        if ban.network not in self.bans and len(self.bans) >= BANS_MAX:
            raise NotAllowed(f"the server has {BANS_MAX} bans, the most it keeps; /gunban some")
        self.bans[ban.network] = ban
        self._changed()

    def remove(self, network: Network) -> bool:
        if self.bans.pop(network, None) is None:
            return False
        self._changed()
        return True

    def find(self, host: str) -> ServerBan | None:
        """The ban covering ``host`` (an address, or an IPv6 /64 as ``rules`` counts it)."""
        if not self.bans:
            return None
        for ban in self.bans.values():
            if covers(ban.network, host):
                return ban
        return None

    def _changed(self) -> None:
        if self.save is not None:
            self.save([(str(b.network), b.by, b.reason) for b in self.bans.values()])


def _address(member: Member) -> str | None:
    """The address a ban may hold against ``member``: none for a UNIX socket's "local",
    which every local user shares."""
    return member.address if member.address and member.address != "local" else None


def parse_network(text: str) -> Network:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise BadArguments(
            f"{_short(clean_text(text), 50)!r} is not an address or network "
            "(203.0.113.7, 203.0.113.0/24, 2001:db8::/48)"
        ) from None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:  # an IPv4 address, as IPv6
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
        if network.prefixlen > 64:
            raise BadArguments(
                f"{network} is narrower than a /64: the server counts IPv6 clients by /64 "
                f"(one subscriber's block); ban {network.supernet(new_prefix=64)}"
            )
    return network


def network_key(address: str) -> str:
    """The key an address is counted under.

    An IPv6 subscriber is usually given a whole /64, so one host could otherwise
    count as 2**64 addresses; IPv4 seen through an IPv6 socket is the IPv4 address.
    """
    if ":" not in address:
        return address  # IPv4 (or a UNIX socket's "local"): as it is, without parsing
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _parse_address(text: str) -> str | None:
    """An address typed for a ban, as ``network_key`` counts it, or None."""
    try:
        return network_key(str(ipaddress.ip_address(text.strip("[]"))))
    except ValueError:
        return None


def _pattern_ban(shown: str, pattern: str, by: str, reason: str) -> Ban:
    # Each literal run folded as nicknames are, so a look-alike cannot slip by.
    looks = "".join(p if p in "*?" else skeleton(p) for p in re.split(r"([*?])", pattern))
    return Ban(
        shown=shown, by=by, reason=reason, pattern=pattern,
        regex=re.compile(fnmatch.translate(pattern)),
        looks=re.compile(fnmatch.translate(looks)),
    )  # fmt: skip


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Moderator:
    """The rules above, acting on the chat service's members and rooms."""

    log = Logger()

    def __init__(self, service: ChatService, operators: frozenset[str] = frozenset()) -> None:
        self.service = service
        self.operators = frozenset(skeleton(name) for name in operators)
        self.server_bans = ServerBans()

    # -- who may -------------------------------------------------------------------------

    def is_server_operator(self, member: Member) -> bool:
        return member.logged_in and bool(self.operators) and skeleton(member.nick) in self.operators

    def is_operator(self, member: Member, room: Room) -> bool:
        return member in room.ops or self.is_server_operator(member)

    def founded(self, member: Member, room: Room) -> None:
        """``member`` created ``room``: its first operator.  Over a network its own
        server says so, in the network's order: two servers creating one room at once
        make both founders operators, everywhere."""
        if room.name != LOBBY and not member.node:
            self._act(member, room, "found", at=self.service.clock.seconds())

    def emptied(self, room: Room, member: Member) -> None:
        """The last member left ``room`` here: the room and its state are gone (every
        server says so; the network forgets only this incarnation of the room)."""
        if self.service.network.id:
            self.service.network.keep_room(room.key, None, room.born)

    def _room(self, member: Member, raw: str | None) -> Room:
        if raw is None:
            if member.current is None:
                raise NotInRoom("you are not in any room; name one: #room")
            return member.current
        name = validate_room(raw)
        key = room_key(name)
        room = member.rooms.get(key)
        if room is not None:
            return room
        if not self.is_server_operator(member):  # they act in rooms they are not in
            raise NotInRoom(f"you are not in {name}")
        room = self.service.rooms.find(key)
        if room is None:
            raise NotInRoom(f"there is no room {name}")
        return room

    def _need_op(self, member: Member, room: Room) -> None:
        if self.is_operator(member, room):
            return
        if room.name == LOBBY:
            raise NotAllowed(f"only server operators act in {LOBBY}")
        raise NotAllowed(f"you are not an operator of {room.name}")

    def _target(self, room: Room, nick: str) -> Member:
        target = self.service.nicks.owner(nick)
        if target is None or target not in room.members:
            raise NoSuchNick(
                f"nobody called {_short(clean_text(nick), NICK_MAX + 1)!r} is in {room.name}"
            )
        return target

    def _protected(self, member: Member, target: Member) -> None:
        if self.is_server_operator(target) and not self.is_server_operator(member):
            raise NotAllowed(f"{target.nick} is a server operator")

    def _outside(self, member: Member, room: Room, what: str) -> None:
        """A server operator acting on a room it is not in hears what it did."""
        if member not in room.members:
            svc = self.service
            svc._tell(member, Notice(ts=svc.clock.seconds(), text=f"{room.name}: {what}"))

    def _announce(
        self, room: Room, action: str, actor: Member | None, target: str = "", reason: str = ""
    ) -> None:
        """Tell the room (``actor`` None: the server did it), and an operator acting from
        outside it what it did."""
        svc = self.service
        by = None if actor is None else actor.nick
        svc.log.info(
            "{room}: {by} {action} {target} {reason}",
            room=room.name,
            by=by or "(server)",
            action=action,
            target=target,
            reason=reason,
        )
        event = Moderation(
            ts=svc.clock.seconds(),
            room=room.name,
            action=action,
            by=by,
            target=target,
            reason=reason,
        )
        svc._fanout(room.members, event)
        if actor is not None:
            self._outside(actor, room, f"{action} {target}".strip())

    # -- topics --------------------------------------------------------------------------

    def topic(self, member: Member, raw_room: str | None, text: str | None) -> None:
        room = self._room(member, raw_room)
        if text is None:
            self.service._tell(member, self.topic_event(room))
            return
        if room.topic_locked or room.name == LOBBY:
            self._need_op(member, room)
        if room.muted:
            self.check_talk(member, room)  # a topic is talking to the room too
        text = "" if text.strip() == "-" else _short(clean_text(text).strip(), TOPIC_MAX)
        self._act(member, room, "topic", text=text, at=self.service.clock.seconds())

    def topic_event(self, room: Room, changed: bool = False) -> Topic:
        return Topic(
            ts=self.service.clock.seconds(),
            room=room.name,
            topic=room.topic,
            by=room.topic_by,
            set_at=room.topic_at,
            locked=room.topic_locked,
            changed=changed,
        )

    def lock_topic(self, member: Member, raw_room: str | None, locked: bool) -> None:
        room = self._room(member, raw_room)
        self._need_op(member, room)
        if room.topic_locked == locked:
            raise NotAllowed(f"the topic of {room.name} is {'already' if locked else 'not'} locked")
        self._act(member, room, "lock-topic" if locked else "unlock-topic")

    # -- room operators ------------------------------------------------------------------

    def op(self, member: Member, raw_room: str | None, nick: str, give: bool) -> None:
        room = self._room(member, raw_room)
        self._need_op(member, room)
        if room.name == LOBBY:
            raise NotAllowed(f"{LOBBY} has no room operators, only server operators")
        target = self._target(room, nick)
        if give == (target in room.ops):
            raise NotAllowed(
                f"{target.nick} is {'already' if give else 'not'} an operator of {room.name}"
            )
        if not give:
            self._protected(member, target)
        self._act(member, room, "op" if give else "deop", target=self.ident(target))

    def succession(self, room: Room, passed_over: Member | None = None) -> None:
        """The last operator left: the member present longest becomes one (not one that
        is muted there, nor ``passed_over``, who just gave it up).  Over a network the
        server first by name among those with members in the room decides, so that
        exactly one does."""
        if room.ops or not room.members or room.name == LOBBY:
            return
        here = self.service.network.id
        if here and min(m.node or here for m in room.members) != here:
            return  # that server's choice arrives as an "heir"
        heir = next(
            (
                m
                for m in room.members
                if m is not passed_over
                and not room.muted.intersection(self._keys(m))
                and not (room.leaving and m in room.leaving)
            ),
            None,
        )
        if heir is not None:
            self._act(heir, room, "heir")

    def kick(self, member: Member, raw_room: str | None, nick: str, reason: str) -> None:
        room = self._room(member, raw_room)
        self._need_op(member, room)
        target = self._target(room, nick)
        if target is member:
            raise NotAllowed(f"you cannot kick yourself; to leave, /part {room.name}")
        self._protected(member, target)
        reason = _short(clean_text(reason).strip(), REASON_MAX)
        why = f"kicked by {member.nick}" + (f": {reason}" if reason else "")
        self._act(member, room, "kick", target=self.ident(target), why=why)
        self._outside(member, room, f"kicked {target.nick}")

    def _remove(self, room: Room, target: Member, why: str) -> None:
        """Out of the room, everyone told (a part, so clients drop it from the list);
        ``target`` is a member of this server, whose part the others hear of as usual."""
        svc = self.service
        svc.log.info("{room}: {nick} removed ({why})", room=room.name, nick=target.nick, why=why)
        svc.network.parted(target, room.name, why)
        svc._fanout(
            room.members, Part(ts=svc.clock.seconds(), room=room.name, nick=target.nick, reason=why)
        )
        was_current = target.current is room
        svc._remove_from_room(target, room)
        if was_current:
            target.current = next(reversed(target.rooms.values()), None)
            current = target.current.name if target.current else None
            svc._tell(target, Current(ts=svc.clock.seconds(), room=current))
        self.succession(room)

    # -- mutes and bans ------------------------------------------------------------------

    def mute(self, member: Member, raw_room: str | None, nick: str, on: bool) -> None:
        room = self._room(member, raw_room)
        self._need_op(member, room)
        target = self._target(room, nick)
        keys = self._keys(target)
        if on:
            self._protected(member, target)
            if target is member:
                raise NotAllowed("you cannot mute yourself")
            if room.muted.intersection(keys):
                raise NotAllowed(f"{target.nick} is already muted in {room.name}")
            if len(room.mutes) >= MUTES_MAX:
                raise NotAllowed(f"{room.name} has {MUTES_MAX} mutes, the most it keeps")
        elif not room.muted.intersection(keys):
            raise NotAllowed(f"{target.nick} is not muted in {room.name}")
        canonical = sorted(self._canonical_key(k) for k in keys)
        self._act(member, room, "mute" if on else "unmute", keys=canonical, nick=target.nick)

    @staticmethod
    def _keys(member: Member) -> set[str]:
        # The member itself too: a guest that renames is still muted.
        keys = {"n:" + skeleton(member.nick), f"m:{member.node}/{member.id}"}
        if member.logged_in:
            keys.add("l:" + skeleton(member.nick))
        return keys

    def check_talk(self, member: Member, room: Room) -> None:
        """Raise if ``member`` is muted in ``room`` (called only when the room has mutes)."""
        if room.muted.intersection(self._keys(member)) and not self.is_server_operator(member):
            raise NotAllowed(f"you are muted in {room.name}: you can read, not talk")

    def ban(self, member: Member, raw_room: str | None, who: str, reason: str) -> None:
        room = self._room(member, raw_room)
        self._need_op(member, room)
        reason = _short(clean_text(reason).strip(), REASON_MAX)
        if len(room.bans) >= BANS_MAX:
            raise NotAllowed(f"{room.name} has {BANS_MAX} bans, the most it keeps; /unban some")
        target = None
        if any(ch in who for ch in "*?"):
            if any(ch in who for ch in ".:/"):
                raise BadArguments(
                    "a pattern matches nicknames, which have no '.', ':' or '/'; "
                    "ban an address as it is typed (203.0.113.7)"
                )
            if len(who) > PATTERN_MAX or sum(who.count(c) for c in "*?") > WILDCARDS_MAX:
                raise BadArguments(
                    f"a pattern is at most {PATTERN_MAX} characters with at most "
                    f"{WILDCARDS_MAX} wildcards (nicknames are at most {NICK_MAX})"
                )
            ban = _pattern_ban(who, who.casefold(), member.nick, reason)
            if ban.names(member):
                raise NotAllowed("that pattern would ban you too")
        elif (address := _parse_address(who)) is not None:
            if address == _address(member):
                raise NotAllowed("that is your own address")
            ban = Ban(shown=address, by=member.nick, reason=reason, address=address)
        else:
            target = self.service.nicks.owner(who)
            if target is not None:
                self._protected(member, target)
                if target is member:
                    raise NotAllowed("you cannot ban yourself")
                ban = Ban(
                    shown=target.nick,
                    by=member.nick,
                    reason=reason,
                    nick=skeleton(target.nick),
                    login=skeleton(target.nick) if target.logged_in else None,
                    # Not an address the operator shares (loopback, a NAT): that would
                    # keep the operator out too.
                    address=_address(target) if _address(target) != _address(member) else None,
                    who=(target.node, target.id),
                )
            else:
                if len(who) > NICK_MAX:
                    raise BadArguments(
                        f"nicknames are at most {NICK_MAX} characters; to ban many, use a "
                        "pattern such as spam*"
                    )
                ban = Ban(shown=who, by=member.nick, reason=reason, nick=skeleton(who))
        if any(b.shown.casefold() == ban.shown.casefold() for b in room.bans):
            raise NotAllowed(f"{ban.shown} is already banned from {room.name}")
        self._act(member, room, "ban", ban=self._ban_data(ban))

    def unban(self, member: Member, raw_room: str | None, who: str) -> None:
        room = self._room(member, raw_room)
        self._need_op(member, room)
        folded = who.casefold()
        kept = [b for b in room.bans if b.shown.casefold() != folded]
        if len(kept) == len(room.bans):
            raise NotAllowed(
                f"no ban on {_short(clean_text(who), 40)!r} in {room.name} (/bans lists them)"
            )
        self._act(member, room, "unban", who=who)

    def bans(self, member: Member, raw_room: str | None) -> Bans:
        """A room's bans, for its operators."""
        room = self._room(member, raw_room)
        self._need_op(member, room)
        listed = [(b.shown, b.by, b.reason) for b in room.bans]
        return Bans(ts=self.service.clock.seconds(), room=room.name, bans=listed)

    def network_bans(self, member: Member) -> Bans:
        """The server's bans, for server operators."""
        self._need_server_op(member)
        listed = [(str(b.network), b.by, b.reason) for b in self.server_bans.bans.values()]
        return Bans(ts=self.service.clock.seconds(), room=None, bans=listed)

    def may_join(self, member: Member, name: str) -> bool:
        """Whether no ban keeps ``member`` out of the room called ``name`` (if it exists)."""
        room = self.service.rooms.find(room_key(name))
        if room is None or not room.bans:
            return True
        try:
            self.check_join(member, room)
        except Banned:
            return False
        return True

    def check_join(self, member: Member, room: Room) -> None:
        """Raise if a ban keeps ``member`` out of ``room``."""
        if self.is_server_operator(member):
            return
        for ban in room.bans:
            if ban.keeps_out(member):
                why = f": {ban.reason}" if ban.reason else ""
                raise Banned(f"you are banned from {room.name}{why}")

    # -- acting here and on every server -------------------------------------------------

    def _act(self, member: Member, room: Room, action: str, **data: Any) -> None:
        """Do ``action`` (checked already): at once when alone (or apart from the
        network), else when the network hands it back, in its order, on every server."""
        network = self.service.network
        data["room"] = room.name
        data["from"] = network.id
        if not network.moderated(member, action, **data):
            self._apply(member, room, action, data)

    def replicated(self, action: str, data: dict[str, Any], departed: Member | None = None) -> None:
        """An action the network hands back, in its order: a member's (checked on its
        server, this one included), or an heir a server chose (``by``: the heir).  The
        server it came from keeps the room's new state for servers to come.

        ``departed``: this server's member who did it and has left since (the others
        apply it before they hear it left; here it was checked as it was typed)."""
        actor = self._resolve(data["by"]) or departed
        room = self.service.rooms.find(room_key(str(data["room"])))
        if actor is None or room is None:
            return
        if actor is departed or self._may(actor, room, action, data):
            self._apply(actor, room, action, data)
        if data.get("from") == self.service.network.id:
            self._keep(room)

    def _may(self, actor: Member, room: Room, action: str, data: dict[str, Any]) -> bool:
        """Whether ``actor`` may still do it at its place in the network's order: an
        action that crossed another (its operator deopped, kicked or banned first) is
        dropped on every server alike."""
        if action in ("found", "heir") or self.is_server_operator(actor):
            return True
        if action == "topic" and not room.topic_locked and room.name != LOBBY:
            return actor in room.members and not (
                room.muted and room.muted.intersection(self._keys(actor))
            )
        if actor not in room.ops:
            return False
        target = data.get("target")
        if target is not None:  # room operators cannot act on server operators
            member = self._resolve(target)
            return member is None or not self.is_server_operator(member)
        return True

    def _apply(self, actor: Member, room: Room, action: str, data: dict[str, Any]) -> None:
        """Change the room and tell it; what would change nothing (an action raced by
        another operator's) is passed over silently, on every server alike."""
        svc = self.service
        room.mods += 1
        if action == "found":
            if actor in room.members:
                if not room.born:
                    node, mid = self.ident(actor)
                    room.born = f"{float(data['at']):.6f}/{node}/{mid}"
                room.ops[actor] = None
        elif action == "topic":
            room.topic, room.topic_by = str(data["text"]), actor.nick
            room.topic_at = float(data["at"])
            svc._rooms_version += 1  # /rooms shows topics
            svc._fanout(room.members, self.topic_event(room, changed=True))
        elif action in ("lock-topic", "unlock-topic"):
            if room.topic_locked != (action == "lock-topic"):
                room.topic_locked = action == "lock-topic"
                self._announce(room, action, actor)
        elif action in ("op", "deop"):
            target = self._resolve(data["target"])
            if (
                target is None
                or target not in room.members
                or (action == "op") == (target in room.ops)
            ):
                return
            if action == "op":
                room.ops[target] = None
            else:
                room.ops.pop(target, None)
            self._announce(room, action, actor, target.nick)
            if action == "deop":
                self.succession(room, passed_over=target)
        elif action == "heir":
            if actor in room.members and not room.ops:
                room.ops[actor] = None
                self._announce(room, "op", None, actor.nick)
        elif action in ("mute", "unmute"):
            keys = frozenset(self._local_key(str(k)) for k in data["keys"])
            if (action == "mute") == bool(room.muted.intersection(keys)):
                return  # already (not) muted
            if action == "mute" and len(room.mutes) >= MUTES_MAX:
                return
            if action == "mute":
                room.mutes.append(keys)
            else:  # every mute of that member, whatever name it had then
                room.mutes = [m for m in room.mutes if not m.intersection(keys)]
            room.muted = set().union(*room.mutes)
            self._announce(room, action, actor, str(data["nick"]))
        elif action == "ban":
            ban = self._ban_from(data["ban"])
            if len(room.bans) >= BANS_MAX or any(
                b.shown.casefold() == ban.shown.casefold() for b in room.bans
            ):
                return
            room.bans.append(ban)
            self._announce(room, "ban", actor, ban.shown, ban.reason)
            # Those it names (for an address typed: whoever is here from it) are put out
            # now, each by its own server (the others hear of its part later, but take
            # away its operator status at once); the address keeps them out on joining
            # again.
            why = f"banned by {actor.nick}" + (f": {ban.reason}" if ban.reason else "")
            for other in list(room.members):
                if other is actor or not ban.puts_out(other) or self.is_server_operator(other):
                    continue
                room.ops.pop(other, None)
                if not other.node:
                    svc.tally.disconnect("banned")  # from the room
                    self._remove(room, other, why)
                else:
                    self._leaving(room, other, why)
            self.succession(room)
        elif action == "unban":
            who = str(data["who"])
            kept = [b for b in room.bans if b.shown.casefold() != who.casefold()]
            if len(kept) < len(room.bans):
                room.bans = kept
                self._announce(room, "unban", actor, who)
        elif action == "kick":
            target = self._resolve(data["target"])
            if target is None or target not in room.members:
                return
            room.ops.pop(target, None)  # at once, on every server: its part comes later
            if not target.node:
                svc.tally.disconnect("kicked")  # from the room
                self._remove(room, target, str(data["why"]))
            else:
                self._leaving(room, target, str(data["why"]))
            self.succession(room)

    def gone_out(self, room: Room) -> None:
        """A member kicked or banned from ``room`` on another node has left it: the kept
        state no longer names it (every node counts it alike; the first write wins)."""
        room.mods += 1
        if room.members:
            self._keep(room)

    @staticmethod
    def _leaving(room: Room, member: Member, why: str) -> None:
        if room.leaving is None:
            room.leaving = {}
        room.leaving[member] = why

    # -- who is who over a network, and a room's state kept there ------------------------

    def ident(self, member: Member) -> list[Any]:
        """``member`` as every server knows it: [its server, its number there]."""
        return [member.node or self.service.network.id, member.id]

    def _resolve(self, ident: Any) -> Member | None:
        node, mid = str(ident[0]), int(ident[1])
        if node == self.service.network.id:
            node = ""
        return self.service.by_id.get((node, mid))

    def _canonical_key(self, key: str) -> str:
        """A mute key as every server writes it (this server's members by its name)."""
        return f"m:{self.service.network.id}/{key[3:]}" if key.startswith("m:/") else key

    def _local_key(self, key: str) -> str:
        prefix = f"m:{self.service.network.id}/"
        return "m:/" + key[len(prefix) :] if key.startswith(prefix) else key

    def _ban_data(self, ban: Ban) -> dict[str, Any]:
        who = None if ban.who is None else [ban.who[0] or self.service.network.id, ban.who[1]]
        return {
            "shown": ban.shown, "by": ban.by, "reason": ban.reason, "pattern": ban.pattern,
            "nick": ban.nick, "login": ban.login, "address": ban.address, "who": who,
        }  # fmt: skip

    def _ban_from(self, data: dict[str, Any]) -> Ban:
        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        shown, by, reason = str(data["shown"]), str(data["by"]), str(data.get("reason", ""))
        pattern = text("pattern")
        if pattern is not None:
            return _pattern_ban(shown, pattern[:PATTERN_MAX], by, reason)
        who = data.get("who")
        if who is not None:
            node = str(who[0])
            who = ("" if node == self.service.network.id else node, int(who[1]))
        return Ban(
            shown=shown, by=by, reason=reason, nick=text("nick"), login=text("login"),
            address=text("address"), who=who,
        )  # fmt: skip

    def _keep(self, room: Room) -> None:
        if self.service.network.id:
            self.service.network.keep_room(room.key, self.snapshot(room), room.born)

    def snapshot(self, room: Room) -> str:
        """A room's topic, operators, mutes and bans as the network keeps them, with
        which incarnation of the room it is (``born``, and ``bt``: when) and how many
        actions it has seen (``v``), so a newer state is never replaced by an older."""
        born_at = float(room.born.split("/", 1)[0]) if room.born else 0.0
        return json.dumps(
            {
                "born": room.born, "bt": born_at, "v": room.mods,
                "topic": room.topic, "by": room.topic_by, "at": room.topic_at,
                "locked": room.topic_locked, "ops": [self.ident(m) for m in room.ops],
                "mutes": [sorted(self._canonical_key(k) for k in m) for m in room.mutes],
                "bans": [self._ban_data(b) for b in room.bans],
                "out": [[*self.ident(m), why] for m, why in (room.leaving or {}).items()],
            },
            separators=(",", ":"),
        )  # fmt: skip

    def offered(self, key: str, text: str, sender: str) -> None:
        """Another server's state of a room won over the network's as it came back
        (``sender``): taken by the rule Redis applied (``backplane.redis._KEEP_ROOM``),
        so that every server ends with the same state, whatever the order of arrival."""
        room = self.service.rooms.find(key)
        if room is None:
            return
        try:
            theirs = json.loads(text)
            born, bt = str(theirs["born"]), float(theirs["bt"])
        except (ValueError, TypeError, KeyError):
            return
        here = self.service.network.id
        if room.born == born:
            take = True  # what Redis holds now: the last share of a room is its state
        elif not room.born or not any((m.node or here) != sender for m in room.members):
            take = True  # the room is the sender's members' alone: its state is theirs
        else:  # of two incarnations of a room both share, the older is the room
            take = bool(born) and (bt, born) < (float(room.born.split("/", 1)[0]), room.born)
        if take:
            self.restore(key, text)

    def restore(self, key: str, text: str) -> None:
        """Take a room's state as the network kept it (this server joins the network or
        comes back to it, or another server's state won: the network's word replaces
        what this server did apart).  Its operators who are no longer in the room are
        skipped; when none is left, the room keeps those it has here."""
        room = self.service.rooms.find(key)
        if room is None:
            return
        try:
            data = json.loads(text)
            topic = _short(str(data.get("topic") or ""), TOPIC_MAX)
            by = None if data.get("by") is None else str(data["by"])
            at = None if data.get("at") is None else float(data["at"])
            ops = [self._resolve(i) for i in data.get("ops", [])]
            mutes = [
                frozenset(self._local_key(str(k)) for k in m[:3])
                for m in data.get("mutes", [])[:MUTES_MAX]
            ]
            bans = [self._ban_from(b) for b in data.get("bans", [])[:BANS_MAX]]
            born, mods = str(data.get("born") or ""), int(data.get("v") or 0)
            out = [(self._resolve(o[:2]), str(o[2])) for o in data.get("out", [])[:BANS_MAX]]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            self.log.warn("the network's state of room {key} is unreadable", key=key)
            return
        room.topic, room.topic_by, room.topic_at = topic, by, at
        room.topic_locked = bool(data.get("locked"))
        if room.name != LOBBY:  # those still here; none: the network picks an heir
            room.ops = {m: None for m in ops if m is not None and m in room.members}
        room.mutes, room.muted = mutes, set().union(*mutes)
        room.bans, room.born, room.mods = bans, born, mods
        self.service._rooms_version += 1
        room.leaving = None
        for member, why in out:  # kicked while their node was apart: put out now
            if member is None or member not in room.members:
                continue
            room.ops.pop(member, None)
            if member.node:
                self._leaving(room, member, why)
            else:
                self.service.tally.disconnect("kicked")
                self._remove(room, member, why)
        self.enforce(room)
        self.succession(room)

    def enforce(self, room: Room) -> None:
        """Put out of ``room`` this server's members its bans keep out (bans made while
        this server was apart from the network, or members seated here meanwhile)."""
        if not room.bans:
            return
        for member in list(room.members):
            if member.node or self.is_server_operator(member):
                continue
            ban = next((b for b in room.bans if b.keeps_out(member)), None)
            if ban is not None:
                self.service.tally.disconnect("banned")
                why = f"banned by {ban.by}" + (f": {ban.reason}" if ban.reason else "")
                self._remove(room, member, why)

    # -- server operators ----------------------------------------------------------------

    def _need_server_op(self, member: Member) -> None:
        # Server-wide actions work over a network too: each node applies them to its own.
        if not self.is_server_operator(member):
            raise NotAllowed("only server operators may do that (--operator)")

    def kill(self, member: Member, nick: str, reason: str) -> None:
        self._need_server_op(member)
        svc = self.service
        target = svc.nicks.owner(nick)
        if target is None:
            raise NoSuchNick(f"nobody is called {_short(clean_text(nick), NICK_MAX + 1)!r}")
        if target is member:
            raise NotAllowed("to leave, /quit")
        reason = _short(clean_text(reason).strip(), REASON_MAX) or "no reason given"
        if target.node:  # its own server disconnects it, and tells everyone as usual
            svc.network.operated(member, "kill", target=[target.node, target.id], reason=reason)
            text = f"{target.nick} is on another server of the network, which disconnects it"
            svc._tell(member, Notice(ts=svc.clock.seconds(), text=text))
            svc.log.warn(
                "{by} disconnects {nick} (on {node}): {reason}",
                by=member.nick,
                nick=target.nick,
                node=target.node,
                reason=reason,
            )
            return
        self.disconnect(member.nick, target, reason)

    def disconnect(self, by: str, target: Member, reason: str) -> None:
        """``/kill``, carried out here (``target`` is a member of this server)."""
        svc = self.service
        if not target.present or target.node:
            return
        svc.log.warn(
            "{by} disconnected {nick} from {origin}: {reason}",
            by=by,
            nick=target.nick,
            origin=target.origin,
            reason=reason,
        )
        svc.tally.disconnect("killed")
        svc._leave_all(target, Disconnected.type, reason=f"disconnected by {by}: {reason}")
        svc._safe_close(
            target,
            Bye(ts=svc.clock.seconds(), reason=f"disconnected by server operator {by}: {reason}"),
        )

    def wall(self, member: Member, text: str) -> None:
        self._need_server_op(member)
        text = _short(clean_text(text).strip(), WALL_MAX)
        if not text:
            raise BadArguments("usage: /wall text")
        self.service.network.operated(member, "wall", text=text)
        self.notice_all(member.nick, text)

    def notice_all(self, by: str, text: str) -> None:
        """``/wall``, to this server's members."""
        svc = self.service
        svc.log.info("notice to everyone from {by}: {text}", by=by, text=text)
        svc._fanout(list(svc.members), Wall(ts=svc.clock.seconds(), by=by, text=text))

    def gban(self, member: Member, raw: str, reason: str) -> tuple[ServerBan, int]:
        """Ban an address or network from the server (every server of a network); its
        members there are disconnected. Returns the ban and how many left here."""
        self._need_server_op(member)
        network = parse_network(raw)
        if member.address and covers(network, member.address):
            raise NotAllowed("that would ban your own address")
        reason = _short(clean_text(reason).strip(), REASON_MAX)
        self.service.network.operated(member, "gban", network=str(network), reason=reason)
        return self.ban_network(member.nick, network, reason)

    def ban_network(self, by: str, network: Network, reason: str) -> tuple[ServerBan, int]:
        """``/gban``, carried out here."""
        ban = ServerBan(network, by, reason)
        self.server_bans.add(ban)
        svc = self.service
        svc.log.warn(
            "{by} banned {network} from the server: {reason}",
            by=by,
            network=str(network),
            reason=reason or "no reason given",
        )
        gone = [m for m in list(svc.members) if m.address and covers(network, m.address)]
        why = f"banned from this server by {by}" + (f": {reason}" if reason else "")
        for target in gone:
            svc.tally.disconnect("banned")
            svc._leave_all(target, Disconnected.type, reason=why)
            svc._safe_close(target, Bye(ts=svc.clock.seconds(), reason=why))
        return ban, len(gone)

    def gunban(self, member: Member, raw: str) -> bool:
        self._need_server_op(member)
        network = parse_network(raw)
        self.service.network.operated(member, "gunban", network=str(network))
        return self.unban_network(member.nick, network)

    def unban_network(self, by: str, network: Network) -> bool:
        removed = self.server_bans.remove(network)
        if removed:
            self.service.log.warn(
                "{by} lifted the server ban on {network}", by=by, network=str(network)
            )
        return removed
