"""The seams of the chat core.

The core (``ChatService``) knows the people it serves only as ``IParticipant`` providers:
the line protocol is one adapter, a WebSocket adapter or a Redis backplane would be
others.  Nothing behind these interfaces imports a transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from twisted_chat.core.events import Event


class IParticipant(Interface):
    """One connected person, as the core sees them (compare ``iwords.IChatClient``)."""

    def deliver(event: Event) -> None:
        """Show ``event`` to this participant.

        Must return quickly and never wait on the network; may raise, in which case the
        core drops this participant and carries on with everyone else.

        ``event`` may be a ``Batch``: during one input turn the core may append further
        events to it, so an adapter that buffers output must encode it at write time
        (encoding seals it).  The core stops extending it before it delivers anything
        else, so a batch never overtakes a later event.
        """

    def close(final: Event | None) -> None:
        """Send ``final`` (if any) and close the connection.

        The core has already removed the member and told its rooms; the adapter must end
        the connection within a short grace period even if the peer stops reading.
        """

    def set_format(name: str) -> None:
        """Render every later event in the format called ``name`` (``json``, ``text``).

        The core passes on what the member asked for; the renderers are the adapter's,
        so it raises ``UnsupportedFormat("usage: /format json|text")`` for a name it has
        no renderer for, before anything changes.
        """

    def nudge() -> None:
        """The member has been silent for a heartbeat interval.

        An adapter whose peer can answer without its user (a telnet client's timing
        mark, a WebSocket pong) may ask for that answer now; its arrival counts as a sign
        of life like any input.  Others do nothing.  Must not raise for a closed peer.
        """


class ILoginSession(IParticipant):
    """A connection that has not logged in yet (servers with ``--auth``).

    The dispatcher reads its lines with the same parser as a member's and calls these.
    """

    def login(name: str, password: str) -> Deferred[None]:
        """Check ``name`` and ``password`` and, when they are right, seat the member.

        Fires once the attempt is answered (the connection reads nothing meanwhile).
        Refusals are told to the connection by then, or fail with a ``ChatError``.
        """

    def prompt() -> None:
        """Say again that a login is needed (after ``/format``, in the new format)."""


class IChatService(Interface):
    """The chat core as front doors and the rules see it.

    Members are handles returned by ``connect``.  Commands typed by members reach the
    core through ``commands.Dispatcher``, which is part of it; a command may raise a
    ``twisted_chat.core.errors.ChatError`` with a message fit for the user, or return a
    Deferred that fails with one.
    """

    members = Attribute("The connected members, in connection order.")
    clock = Attribute("The IReactorTime the core schedules on and reads the time from.")
    dispatcher = Attribute(
        "The core's commands.Dispatcher: front doors hand it every line a connection types."
    )
    tally = Attribute("The server's core.tally.Tally: counters the rules and doors add to.")

    def connect(
        participant: IParticipant,
        login: str | None = None,
        nick: str | None = None,
        room: str | None = None,
        fmt: str = "text",
        origin: str = "",
        mid: int | None = None,
        address: str = "",
    ) -> Any:
        """Admit a participant, greet it and seat it; returns its member handle.
        ``address``: where it connects from, as bans match it.

        ``login``: the name it logged in as, which becomes its nickname (``mid``: the
        number ``claim_login`` gave, holding that name for it).  Otherwise a
        guest name, or ``nick`` when that is free; ``room`` (when allowed) instead of
        the lobby; ``fmt`` is the format the welcome is announced in; ``origin`` is for
        the log.
        """

    def touch(member: Any) -> None:
        """Record a sign of life (any input) for the heartbeat rule."""

    def connection_lost(member: Any, reason: str) -> None:
        """The front door's connection ended; tell the rooms unless already removed."""

    def drop(member: Any, reason: str) -> None:
        """Remove a member for abuse (``reason`` is told to it and its rooms)."""

    def pong(token: str) -> Event:
        """The answer to a heartbeat ``/ping token``, also before a login."""

    def login_nick(name: str) -> str:
        """The nickname a login name would have; raises ``ChatError`` when it cannot."""

    def nick_in_use(nick: str) -> bool:
        """Whether ``nick`` (or a name that looks like it) is held now."""

    def claim_login(login: str) -> Deferred[int]:
        """Hold the nickname ``login`` on every node for a participant about to connect
        with it: fires with its ``mid``, or fails with ``LoginInUse``."""

    def release_login(login: str, mid: int) -> None:
        """The participant ``claim_login`` held ``login`` for will not connect."""

    def nicks_match(a: str, b: str) -> bool:
        """Whether two names are the same nickname (look-alikes included)."""

    def is_member_of(member: Any, room: str) -> bool:
        """Whether ``member`` is in ``room`` now."""

    def begin_batch() -> None:
        """A front door starts acting on one chunk of input (possibly many lines)."""

    def end_batch() -> None:
        """That chunk is done: output gathered for it may be written."""


# -- what differs between one process and several -----------------------------------------
#
# On one node each of these is a dictionary (``core/local.py``).  Across nodes (a Redis
# backplane) the nickname registry becomes an arbiter every node asks, room membership
# lives where every node can read it, and delivery also publishes to the other nodes.


class INickRegistry(Interface):
    """Who holds which nickname, look-alikes included (every key of ``names.skeletons``)."""

    def owner(nick: str) -> Any:
        """The member holding ``nick`` or a name that looks like it, or None."""

    def claim(nick: str, holder: Any) -> None:
        """``holder`` now holds ``nick`` (the caller has seen ``owner(nick)`` is None)."""

    def release(nick: str, holder: Any) -> None:
        """``holder`` gives ``nick`` up; a name held by someone else stays theirs."""


class IRoomDirectory(Interface):
    """The rooms that exist and who is in each."""

    def find(key: str) -> Any:
        """The room whose ``names.room_key`` is ``key``, or None."""

    def create(key: str, name: str) -> Any:
        """A new, empty room called ``name`` (the caller has seen ``find(key)`` is None)."""

    def remove(key: str) -> None:
        """The room is gone (its last member left)."""

    def count() -> int:
        """How many rooms exist."""

    def rooms() -> Any:
        """Every room (an iterable)."""

    def enter(room: Any, member: Any) -> None:
        """``member`` is in ``room`` from now on."""

    def leave(room: Any, member: Any) -> None:
        """``member`` is no longer in ``room``."""


class IDelivery(Interface):
    """How an event reaches its audience."""

    def fanout(members: Any, event: Event, exclude: Any) -> list[Any]:
        """Hand ``event`` to each member but ``exclude``; the members it failed for.

        One recipient failing must not keep it from the others.
        """

    def broadcast(room: Any, event: Event, exclude: Any) -> list[Any]:
        """``fanout`` to the room's members, inside a batch: the delivery may hand it to
        the whole room at once (and keep what it learnt of the room's members until
        ``room.version`` changes)."""


class INetwork(Interface):
    """The other nodes of a network: what they must hear of this node's own members.

    The core calls these only for its own (local) members, after acting on them here;
    what other nodes' members do reaches the core through ``ChatService.remote_*``.  One
    process has no network (``core.local.Alone``): every call does nothing.
    """

    id = Attribute("This node's name on the network (empty alone); members are (node, id).")

    def arbitrates() -> bool:
        """True when nicknames are granted by the network (``claim``): a name asked for
        before the welcome cannot be granted at once."""

    def claim(nick: str, member_id: int) -> Deferred[bool] | None:
        """Ask the network whether the member numbered ``member_id`` (a member here, or
        one about to connect) may take ``nick``: fires True when it may.

        None when there is nobody to ask, so the local registry decides at once.
        """

    def unclaim(nick: str, member_id: int) -> None:
        """Give back ``nick``, claimed for a member that never connected."""

    def guest_number() -> int | None:
        """A number for a guest name that no other node gives out, or None (count locally)."""

    def arrived(member: Any) -> None:
        """``member`` connected here (its rooms follow as ``joined``)."""

    def joined(member: Any, room: str) -> None:
        """``member`` is now in the room called ``room``."""

    def parted(member: Any, room: str, reason: str) -> None:
        """``member`` left ``room`` by /part."""

    def talked(member: Any, event: Event) -> None:
        """``member`` said ``event`` (a ``Message`` or an ``Action``) in ``event.room``."""

    def whispered(member: Any, target: Any, event: Event) -> None:
        """``member`` sent ``event`` (a ``Private``) to ``target``, a member elsewhere."""

    def renamed(member: Any, old: str) -> None:
        """``member``, called ``old`` until now, is called ``member.nick``."""

    def left(member: Any, kind: str, reason: str, after: float) -> None:
        """``member`` left the server: ``kind`` is ``quit`` or ``disconnect`` (with
        ``reason``) or ``timeout`` (after ``after`` seconds of silence)."""

    def operated(member: Any, action: str, **data: Any) -> None:
        """``member``, a server operator, acted on the whole network: ``wall`` (``text``),
        ``kill`` (``target``: node and id, ``reason``), ``gban`` (``network``,
        ``reason``) or ``gunban`` (``network``); every node applies it to its own."""

    def moderated(member: Any, action: str, **data: Any) -> bool:
        """``member`` acted on the room ``data["room"]`` (a room operator's action,
        ``found``: it created the room, or ``heir``: this node chose it, of any node, to
        succeed the last operator).  True: the network hands it back to every node, this
        one included, in one order, to apply with ``Moderator.replicated`` (members named
        by ``[node, id]``); False: nobody to tell, apply it now."""

    def keep_room(key: str, state: str | None, born: str) -> None:
        """Keep a room's moderation (``Moderator.snapshot``) for nodes that join later;
        ``state`` None: the incarnation ``born`` of the room is gone."""


class IHistory(Interface):
    """What was said in rooms (and, when the operator asks, in private), kept for the
    members who come later.

    The core records its own members' room lines and, in the same turn as a join, shows
    the joining member the room's last ``replay`` lines from memory: nothing said after
    the join is missed or shown twice.  ``/history`` pages further back with ``before``,
    from the oldest line the member has been shown.  ``twisted_chat.history`` keeps them
    (the core's default, ``core.local.Forgetful``, keeps nothing).

    Lines are kept under a key: a room's key, or ``conversation(a, b)`` for two people's
    private messages.  Items have ``id`` (increasing), ``ts``, ``kind``, ``nick``,
    ``text`` and ``to`` (the recipient of a private message, else None).
    """

    enabled = Attribute("Whether anything is kept (``/history`` says so when not).")
    replay = Attribute("How many of a room's last lines a joining member is shown (0: none).")
    private = Attribute("Whether private messages are kept.")

    def record(
        key: str,
        ts: float,
        kind: str,
        nick: str,
        text: str,
        to: str | None = None,
        ident: int | None = None,
    ) -> None:
        """Keep a line; ``kind``: "message", "action" or "private" (with ``to``);
        ``ident``: the id the network gave a line said on another node (None: one of
        this node's).  Must not block: called on every message."""

    def recent(key: str, n: int) -> tuple[Sequence[Any], bool]:
        """The last ``n`` lines kept under ``key``, oldest first, from memory, and whether
        older ones may be kept; fewer when they would make too long an answer."""

    def mark(key: str) -> int:
        """An id above every line kept under ``key`` so far: where paging starts for a
        member who has been shown none."""

    def before(key: str, before_id: int, n: int) -> Deferred[tuple[Sequence[Any], bool]]:
        """The newest ``n`` lines kept under ``key`` older than ``before_id``, oldest
        first, and whether older ones are kept; fails with ``HistoryUnavailable`` (a
        ``ChatError``) when they cannot be read."""
