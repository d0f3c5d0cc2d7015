"""The chat core: members, rooms, the nickname registry, fan-out and the heartbeat rule.

It is a Twisted ``Service`` so twistd starts and stops it (the heartbeat sweep runs only
while it is running) and it takes its clock as an argument, so tests drive time.
"""

from __future__ import annotations

import heapq
import itertools
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat import __version__
from twisted_chat.core.busylog import BusyLog
from twisted_chat.core.commands import Dispatcher, welcome_commands
from twisted_chat.core.errors import (
    ChatError,
    EmptyMessage,
    HistoryUnavailable,
    LoginInUse,
    NickReserved,
    NickTaken,
    NoHistory,
    NoSuchNick,
    NoSuchRoom,
    NotInRoom,
    ServerRoomsFull,
    TooManyRooms,
)
from twisted_chat.core.events import (
    Action,
    Batch,
    Bye,
    Crowd,
    Current,
    Disconnected,
    Event,
    History,
    IdleWarning,
    Join,
    Members,
    Message,
    Network,
    NickChange,
    Part,
    Pong,
    Private,
    Quit,
    RoomList,
    Shutdown,
    TimedOut,
    Welcome,
)
from twisted_chat.core.interfaces import (
    IChatService,
    IDelivery,
    IHistory,
    INetwork,
    INickRegistry,
    IParticipant,
    IRoomDirectory,
)
from twisted_chat.core.local import (
    REMOTE,
    Alone,
    Forgetful,
    LocalDelivery,
    LocalNicks,
    LocalRooms,
)
from twisted_chat.core.moderation import Ban, Moderator
from twisted_chat.core.names import (
    LOBBY,
    NICK_MAX,
    conversation,
    room_key,
    skeleton,
    skeletons,
    validate_nick,
    validate_room,
)
from twisted_chat.core.sanitize import clean_text
from twisted_chat.core.tally import Tally


class InputLimits(Protocol):
    """The input limits the front doors enforce, as the welcome announces them."""

    @property
    def rate(self) -> float: ...

    @property
    def burst(self) -> float: ...

    @property
    def byte_rate(self) -> float: ...

    @property
    def flood_timeout(self) -> float: ...


TOKEN_MAX = 64
SHOWN = 20  # names listed per kind in a crowd summary; the rest are counted
GUEST_NAME = re.compile(r"guest[0-9ol]+")
REASON_MAX = 200
ROOMS_SHOWN = 50  # rooms in one /rooms answer; the rest are counted
QUERY_MAX = 40  # characters of a /rooms search echoed back
HISTORY_PAGE = 50  # lines /history shows when not told how many
HISTORY_WAIT = 10.0  # seconds a /history may take before the member is told it failed
CONVERSATIONS_SEEN = 20  # private conversations whose paging a member's cursor keeps


@dataclass(frozen=True)
class HeartbeatPolicy:
    """The heartbeat rule, announced to every client at connect.

    ``interval``: how often clients should send a line; ``timeout``: silence longer than
    this removes a member; ``sweep``: how often the rule is applied (so removal happens by
    ``timeout + sweep``); ``warning``: a silent member is warned this long before removal.
    """

    interval: float = 10.0
    timeout: float = 30.0
    sweep: float = 1.0
    warning: float = 5.0

    @property
    def nudge_after(self) -> float:
        """Silence after which the adapter may ask the peer for a sign of life itself."""
        return min(self.interval, self.warn_after)

    @property
    def warn_after(self) -> float:
        # A warning window longer than half the timeout would nag; clamp it.
        return self.timeout - min(self.warning, self.timeout / 2)


@dataclass(eq=False)
class Room:
    name: str
    # Its key in the room directory (``room_key(name)``), kept: folding look-alikes costs
    # microseconds, too much to redo for every message.
    key: str = ""
    members: dict[Member, None] = field(default_factory=dict)
    # Bumped on every change of membership: an open batch is only extended while the
    # audience it was handed to is still exactly the room's.
    version: int = 0
    # Crowd bookkeeping (see ``ChatService.summarize_above``): what the next summary says.
    arrived: dict[Member, None] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)
    left_count: int = 0
    renamed: list[tuple[str, str]] = field(default_factory=list)
    renamed_count: int = 0
    summary_call: IDelayedCall | None = None
    # Moderation (core/moderation.py): operators in the order they became one, mutes
    # (each the keys of one muted member; ``muted`` is their union, for the quick test),
    # bans, and the topic.  ``born`` names this incarnation of the room over a network
    # and ``mods`` counts the moderation applied to it (the same on every node).
    ops: dict[Member, None] = field(default_factory=dict)
    mutes: list[frozenset[str]] = field(default_factory=list)
    muted: set[str] = field(default_factory=set)
    bans: list[Ban] = field(default_factory=list)
    topic: str = ""
    topic_by: str | None = None
    topic_at: float | None = None
    topic_locked: bool = False
    born: str = ""
    mods: int = 0
    # Members of other nodes kicked or banned here whose part is still on its way (and
    # why): not heirs meanwhile, and put out by their node when it settles the room's
    # state after missing the kick (None: nobody, without a dict per room).
    leaving: dict[Member, str] | None = None
    # Per member here: the id of the oldest line of history it has been shown, where its
    # next /history pages back from (one entry in a room's dict, not a dict per member).
    seen: dict[Member, int] = field(default_factory=dict)


@dataclass(eq=False)
class _Run:
    """The batch most recently handed to a room's members in this input turn."""

    room: Room
    version: int
    exclude: Member | None
    batch: Batch


@dataclass(eq=False, slots=True)
class Member:
    """One participant's state in the core; adapters hold it as an opaque handle."""

    participant: IParticipant
    nick: str
    last_seen: float
    rooms: dict[str, Room] = field(default_factory=dict)
    current: Room | None = None
    warned: bool = False
    nudged: bool = False
    present: bool = True
    fmt: str = "text"  # the name of its rendering, for the welcome to announce
    logged_in: bool = False
    origin: str = ""  # where it connects from, as its adapter describes it (for the log)
    address: str = ""  # the address it connects from, as bans match it ("": unknown)
    # Which node it is connected to ("": this one) and its number there: a member of a
    # network is known everywhere as (node, id).
    node: str = ""
    id: int = 0
    # Per private conversation it paged through: the id of the oldest line it has been
    # shown (for rooms, ``Room.seen``); None until the first.
    talks: dict[str, int] | None = None


@implementer(IChatService)
class ChatService(service.Service):
    """Owns every member and room; adapters ask it to act on a member's behalf."""

    log = Logger()
    name = "groupchat-core"
    moderator: Moderator  # topics, operators, mutes, bans (core/moderation.py)

    def __init__(
        self,
        clock: IReactorTime,
        heartbeat: HeartbeatPolicy | None = None,
        max_line: int = 2048,
        shutdown_grace: float = 3.0,
        limits: InputLimits | None = None,
        summarize_above: int = 100,
        summary_interval: float = 10.0,
        max_rooms_per_member: int = 20,
        max_rooms: int = 1000,
        nicks: INickRegistry | None = None,
        rooms: IRoomDirectory | None = None,
        delivery: IDelivery | None = None,
        network: INetwork | None = None,
        history: IHistory | None = None,
        operators: frozenset[str] = frozenset(),
    ) -> None:
        if max_rooms_per_member < 1 or max_rooms < 1:
            raise ValueError("max_rooms_per_member and max_rooms must be at least 1 (#lobby)")
        self.clock = clock
        # Every room costs memory and a line in /rooms, and every membership a share of each
        # fan-out: one client must not be able to make the server hold thousands of rooms.
        self.max_rooms_per_member = max_rooms_per_member  # #lobby counts as one
        self.max_rooms = max_rooms  # rooms existing at once, #lobby included
        # Rooms larger than this announce joins, leaves and renames in one summary per
        # interval instead of one line per change to every member.
        self.summarize_above = summarize_above
        self.summary_interval = summary_interval
        self.heartbeat = heartbeat or HeartbeatPolicy()
        self.max_line = max_line
        self.shutdown_grace = shutdown_grace
        self.limits = limits  # enforced by the adapters; announced here
        self.members: dict[Member, None] = {}
        # What one process keeps in dictionaries and several nodes share: the seams.
        self.nicks: INickRegistry = LocalNicks() if nicks is None else nicks
        self.rooms: IRoomDirectory = LocalRooms() if rooms is None else rooms
        self.delivery: IDelivery = LocalDelivery() if delivery is None else delivery
        # Lines logged once per member: affordable during a storm of connections.
        self._renames = BusyLog(self.log, clock, "renames")
        self._departures = BusyLog(self.log, clock, "departures")
        self.network: INetwork = Alone() if network is None else network
        self.history: IHistory = Forgetful() if history is None else history
        # Every member, this node's and other nodes', by (node, id).
        self.by_id: dict[tuple[str, int], Member] = {}
        self._ids = itertools.count(1)
        if self.rooms.find(room_key(LOBBY)) is None:
            self.rooms.create(room_key(LOBBY), LOBBY)
        # /rooms reads these instead of sorting every room on every call: the rooms by
        # case-folded name (rebuilt only after a room is created or deleted), and the
        # unfiltered first page (reused until any membership changes).
        self._room_order: list[tuple[str, Room]] | None = None
        self._rooms_version = 0
        self._first_page: tuple[int, list[tuple[str, int, str]]] | None = None
        # Members ordered by last sign of life, oldest first: a sweep stops at the first
        # member that is not yet due, so it costs the number of stale members, not all.
        self._activity: OrderedDict[Member, None] = OrderedDict()
        self._guests = itertools.count(1)
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = clock
        self._drained: defer.Deferred[None] | None = None
        # Members whose connection the core asked to close and has not yet seen go.
        self._closing: set[Member] = set()
        self._last_sweep: float | None = None
        self._batch_depth = 0
        self.dispatcher = Dispatcher(self)  # what members type reaches the core through it
        self.moderator = Moderator(self, operators)
        self.tally = Tally()  # counters for --metrics, added to as things happen
        self._run: _Run | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._sweeper.start(self.heartbeat.sweep, now=False)

    def stopService(self) -> defer.Deferred[None]:
        """Tell everyone, close every connection, and wait (bounded) for them to go."""
        super().stopService()
        if self._sweeper.running:
            self._sweeper.stop()
        for room in self.rooms.rooms():
            if room.summary_call is not None and room.summary_call.active():
                room.summary_call.cancel()
            room.summary_call = None
        notice = Shutdown(ts=self.clock.seconds(), reason="the server is stopping")
        members = list(self.members)
        self.log.info(
            "shutting down; closing {count} connection{s}",
            count=len(members),
            s="" if len(members) == 1 else "s",
        )
        for member in members:
            self._forget(member)
            self._safe_close(member, notice)
        self._drained = defer.Deferred()
        if not self._closing:
            self._drained.callback(None)
        d = self._drained
        d.addTimeout(self.shutdown_grace, self.clock, onTimeoutCancel=lambda *_: None)
        return d

    # -- members -----------------------------------------------------------------------

    def nick_in_use(self, nick: str) -> bool:
        return self.nicks.owner(nick) is not None

    def nicks_match(self, a: str, b: str) -> bool:
        """Whether two spellings are the same nickname under the look-alike rule."""
        return not set(skeletons(a)).isdisjoint(skeletons(b))

    @staticmethod
    def login_nick(name: str) -> str:
        """The nickname a login name gives, or the domain error that keeps it out.

        Guest names are refused like reserved ones: the server gives them out.
        """
        nick = validate_nick(name)
        if GUEST_NAME.fullmatch(skeleton(nick)):
            raise NickReserved("names like guest12 are given out by the server")
        return nick

    def claim_login(self, login: str) -> defer.Deferred[int]:
        """Hold ``login`` for a participant about to connect with it, here and on every
        other node: fires with the number to ``connect`` it under, or fails with
        ``LoginInUse``.  Whoever does not connect must ``release_login``."""
        in_use = LoginInUse(f"{login} (or a name that looks like it) is logged in")
        if self.nick_in_use(login):
            return defer.fail(in_use)
        mid = next(self._ids)
        asked = self.network.claim(login, mid)
        if asked is None:
            return defer.succeed(mid)

        def decided(granted: bool) -> int:
            if granted and not self.nick_in_use(login):
                return mid
            if granted:
                self.network.unclaim(login, mid)
            raise in_use

        return asked.addCallback(decided)

    def release_login(self, login: str, mid: int) -> None:
        """The participant ``claim_login`` held ``login`` for will not connect."""
        self.network.unclaim(login, mid)

    def connect(
        self,
        participant: IParticipant,
        login: str | None = None,
        nick: str | None = None,
        room: str | None = None,
        fmt: str = "text",
        origin: str = "",
        mid: int | None = None,
        address: str = "",
    ) -> Member:
        """Admit a participant and seat it in ``room``, or in #lobby.

        Its nickname is its login name (held for it by ``claim_login``, which gave
        ``mid``), else ``nick``, else a guest name.  ``nick``, ``room`` and ``fmt`` are
        what the client asked for before its welcome, so that nobody sees a guest arrive
        in #lobby only to be renamed and leave; a request that cannot be granted is
        ignored here, and the adapter replays it as a command, which says why.
        """
        now = self.clock.seconds()
        if login is not None:
            granted: str | None = login
        elif self.network.arbitrates():
            granted = None  # only the network can grant it: the adapter asks with /nick
        else:
            granted = self._free_nick(nick)
        chosen = granted or self._guest_nick()
        # Under a name it did not ask for, it waits in #lobby: a room it named must never
        # see it as someone else.
        wanted = (self._open_room(room) if granted or nick is None else None) or LOBBY
        member = Member(
            participant=participant,
            nick=chosen,
            last_seen=now,
            logged_in=login is not None,
            fmt=fmt,
            origin=origin,
            address=address,
            id=next(self._ids) if mid is None else mid,
        )
        self.members[member] = None
        self.by_id[("", member.id)] = member
        self.nicks.claim(member.nick, member)
        self._activity[member] = None
        self._close_run()
        start: str | None = wanted
        if wanted != LOBBY and not self.moderator.may_join(member, wanted):
            start = LOBBY  # banned there: the adapter's replayed /join says so
        if start == LOBBY and not self.moderator.may_join(member, LOBBY):
            start = None  # banned even from #lobby: in no room, and told why below
        participant.deliver(self.welcome(member, starting_in=start))
        self.network.arrived(member)
        try:
            self.join(member, start or LOBBY)
        except ChatError as e:
            self.dispatcher.report(member, e)
        return member

    def _free_nick(self, raw: str | None) -> str | None:
        if raw is None:
            return None
        try:
            nick = validate_nick(raw)
        except ChatError:
            return None
        taken = self.nicks.owner(nick) is not None
        return None if taken or GUEST_NAME.fullmatch(skeleton(nick)) else nick

    def _open_room(self, raw: str | None) -> str | None:
        if raw is None:
            return None
        try:
            name = validate_room(raw)
        except ChatError:
            return None
        room = self.rooms.find(room_key(name))
        if room is not None:
            return room.name
        return name if self.rooms.count() < self.max_rooms else None

    def welcome(self, member: Member, starting_in: str | None = None) -> Welcome:
        hb = self.heartbeat
        rooms = [r.name for r in member.rooms.values()]
        current = member.current.name if member.current else None
        if starting_in is not None:
            rooms, current = [starting_in], starting_in
        return Welcome(
            ts=self.clock.seconds(),
            nick=member.nick,
            rooms=rooms,
            current=current,
            heartbeat_interval=hb.interval,
            heartbeat_timeout=hb.timeout,
            sweep_interval=hb.sweep,
            idle_warning=hb.timeout - hb.warn_after,
            max_line=self.max_line,
            version=__version__,
            format=member.fmt,
            commands=welcome_commands(member.logged_in, self.history.enabled),
            logged_in=member.logged_in,
            limits=None
            if self.limits is None
            else {
                "rate": self.limits.rate,
                "burst": self.limits.burst,
                "byte_rate": self.limits.byte_rate,
                "flood_timeout": self.limits.flood_timeout,
            },
        )

    def _guest_nick(self) -> str:
        while True:
            number = self.network.guest_number()
            nick = f"guest{next(self._guests) if number is None else number}"
            if self.nicks.owner(nick) is None:
                return nick

    def touch(self, member: Member) -> None:
        member.last_seen = self.clock.seconds()
        member.warned = False
        member.nudged = False
        if member.present:
            self._activity.move_to_end(member)

    def set_format(self, member: Member, name: str) -> None:
        """Switch the member's rendering by name; its adapter refuses a name it lacks."""
        member.participant.set_format(name)
        member.fmt = name
        self._tell(member, self.welcome(member))

    def set_nick(self, member: Member, raw: str) -> defer.Deferred[None] | None:
        if member.logged_in:
            raise NickReserved(
                f"you are logged in as {member.nick}; your nickname is your login name"
            )
        nick = validate_nick(raw)
        key = skeleton(nick)
        owner = self.nicks.owner(nick)
        if GUEST_NAME.fullmatch(key) and owner is not member:
            raise NickReserved("names like guest12 are given out by the server; choose another")
        if owner is not None and owner is not member:
            raise NickTaken(f"the nickname {nick!r} is taken (or looks too much like one that is)")
        if nick == member.nick:
            return None
        if owner is member:  # another spelling of its own name: nobody else can hold it
            self._rename(member, nick)
            return None
        asked = self.network.claim(nick, member.id)
        if asked is None:
            self._rename(member, nick)
            return None

        def decided(granted: bool) -> None:
            if not member.present:
                return
            holder = self.nicks.owner(nick)
            if not granted or (holder is not None and holder is not member):
                raise NickTaken(
                    f"the nickname {nick!r} is taken (or looks too much like one that is)"
                )
            self._rename(member, nick)

        return asked.addCallback(decided)

    def _rename(self, member: Member, nick: str) -> None:
        """``member`` is called ``nick`` from now on: its rooms hear of it."""
        old = member.nick
        self.nicks.release(old, member)
        self.nicks.claim(nick, member)
        member.nick = nick
        if not member.node:  # another node's member is logged there
            self._renames.info("nick {old} -> {new}", old=old, new=nick)
            self.network.renamed(member, old)
        audience: dict[Member, None] = {member: None}
        for room in member.rooms.values():
            if self._summarizing(room):
                self._note_rename(room, member, old, nick)
            else:
                audience.update(room.members)
        self._fanout(audience, NickChange(ts=self.clock.seconds(), old=old, new=nick))

    def quit(self, member: Member, reason: str) -> None:
        reason = _short(clean_text(reason), REASON_MAX)
        if not member.present:
            return
        self._departures.info(
            "quit {nick} from {origin} ({reason})",
            nick=member.nick,
            origin=member.origin,
            reason=reason or "no reason",
        )
        self.tally.disconnect("quit")
        self._leave_all(member, Quit.type, reason=reason)
        self._safe_close(member, Bye(ts=self.clock.seconds(), reason="you quit"))

    def connection_lost(self, member: Member, reason: str) -> None:
        self._closing.discard(member)
        if self._drained is not None and not self._closing and not self._drained.called:
            self._drained.callback(None)
        if not member.present:
            return
        self._departures.info(
            "disconnect {nick} from {origin}: {reason}",
            nick=member.nick,
            origin=member.origin,
            reason=reason,
        )
        self._leave_all(member, Disconnected.type, reason=reason)

    def drop(self, member: Member, reason: str) -> None:
        """Remove a member the server gave up on (an adapter error, abuse)."""
        if not member.present:
            return
        self.log.warn(
            "dropping {nick} from {origin}: {reason}",
            nick=member.nick,
            origin=member.origin,
            reason=reason,
        )
        self._leave_all(member, Disconnected.type, reason=reason)
        self._safe_close(member, Bye(ts=self.clock.seconds(), reason=reason))

    def _leave_all(self, member: Member, kind: str, reason: str = "", after: float = 0.0) -> None:
        """Tell everyone who shared a room with ``member`` that it left, once each.

        ``kind`` is how: ``quit`` (with ``reason``), ``timeout`` (after ``after`` seconds
        of silence) or ``disconnect`` (with ``reason``).  Someone in two of its rooms gets
        one event naming both, not one per room; recipients who shared the same rooms
        share one event (encoded once).
        """
        rooms = list(member.rooms.values())
        self._forget(member)
        if not member.node:
            self.network.left(member, kind, reason, after)
        nick = member.nick

        def make(names: list[str]) -> Event:
            ts = self.clock.seconds()
            if kind == TimedOut.type:
                return TimedOut(ts=ts, room=names[0], rooms=names, nick=nick, after=after)
            how = Quit if kind == Quit.type else Disconnected
            return how(ts=ts, room=names[0], rooms=names, nick=nick, reason=reason)

        shared: dict[Member, list[str]] = {}
        for room in rooms:
            if self._summarizing(room, extra=1):
                self._note_departure(room, member)
                continue
            for other in room.members:
                names = shared.get(other)
                if names is None:
                    shared[other] = [room.name]
                else:
                    names.append(room.name)
        audiences: dict[tuple[str, ...], dict[Member, None]] = {}
        for other, names in shared.items():
            audiences.setdefault(tuple(names), {})[other] = None
        for shared_rooms, audience in audiences.items():
            self._fanout(audience, make(list(shared_rooms)))
        for room in rooms:
            self.moderator.succession(room)

    def _forget(self, member: Member) -> None:
        """Take the member out of every structure, exactly once."""
        if not member.present:
            return
        member.present = False
        self.members.pop(member, None)
        self.by_id.pop((member.node, member.id), None)
        self._activity.pop(member, None)
        self.nicks.release(member.nick, member)
        for room in list(member.rooms.values()):
            self._remove_from_room(member, room)
        member.current = None

    def _safe_close(self, member: Member, final: Event | None) -> None:
        self._closing.add(member)
        try:
            member.participant.close(final)
        except Exception:
            self.log.failure("closing {nick} failed", nick=member.nick)
            self._closing.discard(member)

    # -- rooms -------------------------------------------------------------------------

    def is_member_of(self, member: Member, raw: str) -> bool:
        try:
            key = room_key(validate_room(raw))
        except ChatError:
            return False
        return key in member.rooms

    def _find_room(self, raw: str) -> Room:
        name = validate_room(raw)
        room = self.rooms.find(room_key(name))
        if room is None:
            raise NoSuchRoom(f"there is no room {name}")
        return room

    def _remove_from_room(self, member: Member, room: Room) -> None:
        self.rooms.leave(room, member)
        self._rooms_version += 1
        member.rooms.pop(room.key, None)
        room.seen.pop(member, None)
        room.ops.pop(member, None)
        if room.leaving and room.leaving.pop(member, None) is not None:
            self.moderator.gone_out(room)
        if not room.members and room.name != LOBBY:
            self.moderator.emptied(room, member)
            self.rooms.remove(room_key(room.name))
            self._room_order = None
            if room.summary_call is not None and room.summary_call.active():
                room.summary_call.cancel()
            room.summary_call = None

    def join(self, member: Member, raw: str) -> None:
        """Seat the member in a room, creating it if new, within the room limits.

        Rejoining a room the member is in only makes it current.  An existing room is
        never refused for the server's total: only creating one is.  A member of another
        node was held to the limits there.
        """
        name = validate_room(raw)
        key = room_key(name)
        now = self.clock.seconds()
        room = member.rooms.get(key)
        if room is not None:
            member.current = room
            self._tell(member, Current(ts=now, room=room.name))
            return
        if len(member.rooms) >= self.max_rooms_per_member and not member.node:
            raise TooManyRooms(
                f"you are in {len(member.rooms)} rooms, the most allowed; /part one first"
            )
        room = self.rooms.find(key)
        founded = room is None
        if room is None:
            if self.rooms.count() >= self.max_rooms and not member.node:
                raise ServerRoomsFull(
                    f"the server has {self.rooms.count()} rooms, the most it allows; "
                    "join an existing one (/rooms)"
                )
            room = self.rooms.create(key, name)
            self._room_order = None
            self.log.info("room {room} created by {nick}", room=name, nick=member.nick)
        elif room.bans and not member.node:
            self.moderator.check_join(member, room)
        self.rooms.enter(room, member)
        self._rooms_version += 1
        member.rooms[key] = room
        member.current = room
        if not member.node:
            self.network.joined(member, room.name)
        if founded:  # after the join, which other nodes must have heard of first
            self.moderator.founded(member, room)
        if self._summarizing(room):
            # A crowd: only the joiner hears of it now (no member list: /who has it).
            self._tell(
                member, Join(ts=now, room=room.name, nick=member.nick, count=len(room.members))
            )
            self._note_arrival(room, member)
        else:
            self._fanout(
                room.members,
                Join(ts=now, room=room.name, nick=member.nick, count=len(room.members)),
            )
            self._tell(member, self._members(room))
        if room.topic and not member.node:
            self._tell(member, self.moderator.topic_event(room))
        self._replay(member, key, room, now)
        self._tell(member, Current(ts=now, room=room.name))

    def _replay(self, member: Member, key: str, room: Room, now: float) -> None:
        """The room's last lines, told in the same turn as the join: whatever is said
        next reaches the member live, so nothing is missed or told twice."""
        history = self.history
        if not history.enabled or member.node:
            return
        items, more = history.recent(key, history.replay)
        # Over a network, a line of this node's said a moment ago has no id yet.
        known = [item.id for item in items if item.id is not None]
        room.seen[member] = min(known) if known else history.mark(key)
        if items or more:  # with --history-replay 0: none shown, but /history has some
            self._tell(member, History(ts=now, room=room.name, items=list(items), more=more))

    def show_history(
        self, member: Member, target: str | None, n: int | None
    ) -> defer.Deferred[None]:
        """Page back through a room's history (``target`` a room the member is in, or its
        current one) or, where private messages are kept, a conversation with ``target``:
        the ``n`` lines before the oldest it has been shown."""
        history = self.history
        if not history.enabled:
            raise NoHistory("this server keeps no history")
        n = HISTORY_PAGE if n is None else n
        room: Room | None = None
        peer: str | None = None
        if target is None:
            room = member.current
            if room is None:
                raise NotInRoom("you are not in any room; /join #room first")
        elif history.private and not (target.startswith("#") or self.is_member_of(member, target)):
            # A word without '#' names a room of yours (as /join and /part read it), or,
            # where private messages are kept, the person they were exchanged with.
            peer = validate_nick(target)
            owner = self.nicks.owner(peer)
            peer = owner.nick if owner is not None else peer
        else:
            name = validate_room(target)
            room = member.rooms.get(room_key(name))
            if room is None:
                raise NotInRoom(f"you are not in {name}; /join it to read its history")
        key = room.key if room is not None else conversation(member.nick, peer or "")
        if room is not None:
            cursor = room.seen.get(member)
        else:
            cursor = member.talks.get(key) if member.talks is not None else None
        if cursor is None:
            cursor = history.mark(key)
        d = history.before(key, cursor, n)
        d.addTimeout(HISTORY_WAIT, self.clock)

        def show(found: tuple[Any, bool]) -> None:
            items, more = found
            if not member.present or (room is not None and member.rooms.get(key) is not room):
                return  # gone, or left the room, while it was read
            if items:
                oldest = min(item.id for item in items)
                if room is not None:
                    room.seen[member] = oldest
                else:
                    talks = member.talks
                    if talks is None:
                        talks = member.talks = {}
                    talks.pop(key, None)  # the newest conversation last, to be kept
                    while len(talks) >= CONVERSATIONS_SEEN:
                        talks.pop(next(iter(talks)))
                    talks[key] = oldest
            self._tell(
                member,
                History(
                    ts=self.clock.seconds(),
                    room=None if room is None else room.name,
                    with_=peer,
                    items=list(items),
                    more=more,
                    page=True,
                ),
            )

        def late(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError, defer.CancelledError):
                return Failure(HistoryUnavailable("history did not answer in time; try later"))
            return failure

        return d.addCallbacks(show, late)

    def part(self, member: Member, raw: str | None, reason: str = "") -> None:
        if raw:
            room = self._find_room(raw)
        elif member.current is not None:
            room = member.current
        else:
            raise NotInRoom("you are not in any room")
        if member not in room.members:
            raise NotInRoom(f"you are not in {room.name}")
        reason = _short(clean_text(reason), REASON_MAX)
        if room.muted and not member.node:
            try:
                self.moderator.check_talk(member, room)
            except ChatError:
                reason = ""  # a muted member's reason would be talking to the room
        now = self.clock.seconds()
        if not member.node:
            self.network.parted(member, room.name, reason)
        part = Part(ts=now, room=room.name, nick=member.nick, reason=reason)
        if self._summarizing(room):
            self._tell(member, part)
            self._note_departure(room, member)
        else:
            self._fanout(room.members, part)
        self._remove_from_room(member, room)
        if member.current is room:
            member.current = next(reversed(member.rooms.values()), None)
            self._tell(
                member, Current(ts=now, room=member.current.name if member.current else None)
            )
        self.moderator.succession(room)

    def who(self, member: Member, raw: str | None) -> None:
        if raw:
            room = self._find_room(raw)
        elif member.current is not None:
            room = member.current
        else:
            raise NotInRoom("you are not in any room; name one: /who #room")
        self._tell(member, self._members(room))

    def _members(self, room: Room) -> Members:
        return Members(
            ts=self.clock.seconds(),
            room=room.name,
            members=[m.nick for m in room.members],
            ops=[m.nick for m in room.ops],
        )

    def list_rooms(self, member: Member, query: str | None = None) -> None:
        """Tell the member the largest rooms (those whose name contains ``query``).

        At most ``ROOMS_SHOWN`` rooms and a count of all that matched, so the answer stays
        a few KiB however many rooms exist; the unfiltered page is cached until the next
        change of membership, so members polling /rooms cost next to nothing.
        """
        ts = self.clock.seconds()
        query = _short(clean_text(query or "").strip(), QUERY_MAX) or None
        if query is None:
            page = self._first_page
            if page is None or page[0] != self._rooms_version:
                order = self._ordered_rooms()
                page = self._first_page = (self._rooms_version, _largest(order))
            self._tell(member, RoomList(ts=ts, rooms=page[1], total=self.rooms.count()))
            return
        needle = _fold(query)
        matched = [entry for entry in self._ordered_rooms() if needle in entry[0]]
        rooms = _largest(matched)
        self._tell(member, RoomList(ts=ts, rooms=rooms, total=len(matched), query=query))

    def _ordered_rooms(self) -> list[tuple[str, Room]]:
        """Every room by folded name (the key, for searching); rebuilt after a change.

        Not by room key: its look-alike folding sorts ``#r10`` as ``#rlo``.
        """
        if self._room_order is None:
            entries = [(_fold(room.name), room) for room in self.rooms.rooms()]
            entries.sort(key=lambda entry: (entry[0], entry[1].name))
            self._room_order = entries
        return self._room_order

    # -- talking -----------------------------------------------------------------------

    def _message_text(self, raw: str) -> str:
        text = clean_text(raw).strip()
        if not text:
            raise EmptyMessage("nothing to send once control characters were removed")
        return text

    def say(self, member: Member, raw: str) -> None:
        self._talk(member, raw, Message)

    def act(self, member: Member, raw: str) -> None:
        self._talk(member, raw, Action)

    def _talk(self, member: Member, raw: str, kind: type[Message] | type[Action]) -> None:
        room = member.current
        if room is None:
            raise NotInRoom("you are not in any room; /join #room first")
        if room.muted:
            self.moderator.check_talk(member, room)
        text = self._message_text(raw)
        event = kind(ts=self.clock.seconds(), room=room.name, nick=member.nick, text_=text)
        self.network.talked(member, event)
        self.history.record(room.key, event.ts, event.type, member.nick, text)
        self.tally.messages += 1
        self._broadcast(room, event, exclude=member)

    def private(self, member: Member, nick: str, raw: str) -> None:
        target = self.nicks.owner(nick)
        if target is None:
            raise NoSuchNick(f"nobody is called {_short(clean_text(nick), NICK_MAX + 1)!r}")
        text = self._message_text(raw)
        event = Private(
            ts=self.clock.seconds(), sender=member.nick, recipient=target.nick, text_=text
        )
        if target.node:
            self.network.whispered(member, target, event)
        if self.history.private:
            self.history.record(
                conversation(member.nick, target.nick),
                event.ts,
                event.type,
                member.nick,
                text,
                target.nick,
            )
        self.tally.privates += 1
        self._fanout({target: None, member: None}, event)

    def ping(self, member: Member, token: str) -> None:
        self._tell(member, self.pong(token))

    def pong(self, token: str) -> Pong:
        """The answer to a heartbeat, its token cleaned and bounded."""
        return Pong(ts=self.clock.seconds(), token=_short(clean_text(token).strip(), TOKEN_MAX))

    # -- members of other nodes (a backplane reports what they do) ---------------------

    def remote_arrive(
        self, node: str, mid: int, nick: str, logged_in: bool = False, address: str = ""
    ) -> Member:
        """A member of ``node`` is on the network: it holds ``nick`` here too (``address``:
        where it connected from, which a room ban made here may hold against it)."""
        member = self.by_id.get((node, mid))
        if member is not None:
            return member
        member = Member(
            participant=REMOTE,
            nick=nick,
            last_seen=self.clock.seconds(),
            logged_in=logged_in,
            origin=f"node {node}",
            address=address,
            node=node,
            id=mid,
        )
        self.by_id[(node, mid)] = member
        self.nicks.claim(nick, member)
        return member

    def remote_join(self, member: Member, room: str) -> None:
        self.join(member, room)

    def remote_part(self, member: Member, room: str, reason: str) -> None:
        if self.is_member_of(member, room):
            self.part(member, room, reason)

    def remote_talk(
        self,
        member: Member,
        kind: str,
        room: str,
        text: str,
        ts: float,
        ident: int | None = None,
    ) -> None:
        """``member`` said ``text`` in ``room`` (``kind``: ``message`` or ``action``);
        ``ident``: its id in the network's history, if it is kept."""
        found = member.rooms.get(room_key(room))
        if found is None:
            return
        cls = Action if kind == Action.type else Message
        event = cls(ts=ts, room=found.name, nick=member.nick, text_=clean_text(text))
        if ident is not None:
            self.history.record(found.key, ts, event.type, member.nick, event.text_, None, ident)
        self._broadcast(found, event, exclude=member)

    def remote_private(self, member: Member, target: Member, text: str, ts: float) -> None:
        """``member`` sent ``text`` to ``target``, a member of this node."""
        if target.node or not target.present:
            return
        event = Private(ts=ts, sender=member.nick, recipient=target.nick, text_=clean_text(text))
        self._tell(target, event)

    def remote_rename(self, member: Member, nick: str) -> None:
        if nick != member.nick:
            self._rename(member, nick)

    def remote_leave(self, member: Member, kind: str, reason: str = "", after: float = 0.0) -> None:
        """``member`` left the network: by /quit, timeout, or its connection or node lost."""
        if member.present:
            self._leave_all(member, kind, reason, after)

    def lost_name(self, member: Member, why: str) -> None:
        """The network gave ``member``'s name to another member (while this node was
        apart, say): this one becomes a guest, and is told why before it is renamed."""
        if not member.present or member.node:
            return
        guest = self._guest_nick()
        self._tell(
            member, Network(ts=self.clock.seconds(), up=True, message=f"{why}; you are {guest} now")
        )
        member.logged_in = False
        self._rename(member, guest)

    def network_changed(self, up: bool, message: str) -> None:
        """Tell every member here that the other nodes were lost or are back."""
        self._fanout(list(self.members), Network(ts=self.clock.seconds(), up=up, message=message))

    def remote_members(self, node: str) -> list[Member]:
        """The members of ``node`` known here."""
        return [m for (n, _), m in self.by_id.items() if n == node]

    # -- crowded rooms: joins and leaves summarized -------------------------------------

    def _summarizing(self, room: Room, extra: int = 0) -> bool:
        """Crowded now (``extra``: members already taken out), or a summary is pending."""
        return len(room.members) + extra > self.summarize_above or room.summary_call is not None

    def _note_arrival(self, room: Room, member: Member) -> None:
        room.arrived[member] = None
        self._schedule_summary(room)

    def _note_departure(self, room: Room, member: Member) -> None:
        if member in room.arrived:
            del room.arrived[member]
            return  # came and went within one interval: nobody was told it came
        room.left_count += 1
        if len(room.left) < SHOWN:
            room.left.append(member.nick)
        self._schedule_summary(room)

    def _note_rename(self, room: Room, member: Member, old: str, new: str) -> None:
        if member in room.arrived:
            return  # the summary names it by its new nickname anyway
        room.renamed_count += 1
        if len(room.renamed) < SHOWN:
            room.renamed.append((old, new))
        self._schedule_summary(room)

    def _schedule_summary(self, room: Room) -> None:
        if room.summary_call is None:
            room.summary_call = self.clock.callLater(self.summary_interval, self._summarize, room)

    def _summarize(self, room: Room) -> None:
        """Tell a crowded room who came, went and was renamed since the last summary."""
        room.summary_call = None
        try:
            joined = [m.nick for m in room.arrived]
            event = Crowd(
                ts=self.clock.seconds(),
                room=room.name,
                count=len(room.members),
                joined=joined[:SHOWN],
                joined_count=len(joined),
                left=room.left,
                left_count=room.left_count,
                renamed=room.renamed,
                renamed_count=room.renamed_count,
            )
            room.arrived, room.left, room.renamed = {}, [], []
            room.left_count = room.renamed_count = 0
            if event.joined_count or event.left_count or event.renamed_count:
                self._fanout(room.members, event)
        except Exception:
            self.log.failure("summarizing {room} failed", room=room.name)

    # -- batching: one input turn, many lines -----------------------------------------

    def begin_batch(self) -> None:
        """An adapter starts acting on one chunk of input (possibly many lines)."""
        self._batch_depth += 1

    def end_batch(self) -> None:
        self._batch_depth = max(0, self._batch_depth - 1)
        if not self._batch_depth:
            self._close_run()

    def _close_run(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            run.batch.sealed = True

    def _broadcast(self, room: Room, event: Event, exclude: Member | None = None) -> None:
        """Tell a room; inside a batch, consecutive lines to one room share one delivery.

        Every other delivery the core makes ends the run first.  What reaches a member
        without passing through here (the dispatcher's errors and help, an adapter's own
        notices) goes to the member whose input is being handled: the speaker, whom the
        run excludes, so it cannot be overtaken either.
        """
        if not self._batch_depth:
            self._fanout(room.members, event, exclude)
            return
        run = self._run
        if (
            run is not None
            and run.room is room
            and run.version == room.version
            and run.exclude is exclude
            and not run.batch.sealed
        ):
            run.batch.events.append(event)
            return
        batch = Batch(ts=event.ts, events=[event])
        version = room.version
        self._close_run()
        for member in self.delivery.broadcast(room, batch, exclude):
            self.drop(member, "internal error while sending to you")
        if room.version == version:  # nobody was dropped while it went out
            self._run = _Run(room, version, exclude, batch)

    def _tell(self, member: Member, event: Event) -> None:
        """One event for one member; it ends any open batch so order is kept."""
        self._close_run()
        member.participant.deliver(event)

    def _fanout(
        self, members: Iterable[Member], event: Event, exclude: Member | None = None
    ) -> None:
        """Deliver to each member; one failing recipient is dropped, the rest still get it."""
        self._close_run()
        for member in self.delivery.fanout(members, event, exclude):
            self.drop(member, "internal error while sending to you")

    # -- heartbeat ---------------------------------------------------------------------

    def sweep(self) -> None:
        """Warn members nearing the timeout and remove those past it.

        Never raises: a failure with one member is logged and the sweep goes on, so the
        ``LoopingCall`` keeps running.
        """
        try:
            now = self.clock.seconds()
            hb = self.heartbeat
            last, self._last_sweep = self._last_sweep, now
            if last is not None and now - last > hb.sweep + max(1.0, hb.sweep):
                # The process itself was stopped (SIGSTOP, a suspended VM): everyone's
                # heartbeats may be waiting unread in the sockets. Read them first.
                self.log.warn("server stalled for {gap:.1f} s; skipping one sweep", gap=now - last)
                return
            expired: list[Member] = []
            warn: list[Member] = []
            nudge: list[Member] = []
            for member in self._activity:
                idle = now - member.last_seen
                if idle <= hb.nudge_after:
                    break
                if idle > hb.timeout:
                    expired.append(member)
                    continue
                if not member.nudged:
                    nudge.append(member)
                if idle > hb.warn_after and not member.warned:
                    warn.append(member)
            for member in nudge:
                try:
                    member.nudged = True
                    member.participant.nudge()
                except Exception:
                    self.log.failure("nudging {nick} failed", nick=member.nick)
            for member in warn:
                try:
                    member.warned = True
                    idle = now - member.last_seen
                    member.participant.deliver(
                        IdleWarning(ts=now, idle=idle, remaining=hb.timeout - idle)
                    )
                except Exception:
                    self.log.failure("warning {nick} failed", nick=member.nick)
            for member in expired:
                try:
                    self._expire(member, now - member.last_seen)
                except Exception:
                    self.log.failure("removing {nick} failed", nick=member.nick)
                    self._forget(member)
        except Exception:
            self.log.failure("heartbeat sweep failed")

    def _expire(self, member: Member, idle: float) -> None:
        self.log.info(
            "timeout {nick} from {origin} after {idle:.1f} s",
            nick=member.nick,
            origin=member.origin,
            idle=idle,
        )
        self.tally.disconnect("timeout")
        self._leave_all(member, TimedOut.type, after=idle)
        self._safe_close(
            member, Bye(ts=self.clock.seconds(), reason=f"no heartbeat for {idle:.1f} s")
        )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fold(text: str) -> str:
    """What /rooms TEXT compares: case and compatibility forms ignored, nothing else.

    Not the room key: its look-alike folding (``rn`` reads as ``m``) would make a plain
    substring miss, as ``r`` would in ``#corn``.
    """
    return unicodedata.normalize("NFKC", text).casefold()


def _largest(order: list[tuple[str, Room]]) -> list[tuple[str, int, str]]:
    """The first page of rooms, largest first; ``order`` is by name, which breaks ties.

    ``heapq.nlargest`` is stable and costs O(n log page), not a full sort.
    """
    top = heapq.nlargest(ROOMS_SHOWN, order, key=lambda entry: len(entry[1].members))
    return [(room.name, len(room.members), room.topic) for _, room in top]
