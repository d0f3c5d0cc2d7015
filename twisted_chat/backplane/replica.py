"""One node of a network: its members' actions out as operations, other nodes' in.

Every node holds a replica of the whole network: its own members, and every other
node's members as ``Member`` objects whose participant does nothing (``core.local.Remote``).
A node tells the others what its own members do, as operations (joined, said, renamed,
left), never as the events it shows: each node turns an operation into events for its
own members with the same core code a local action runs, so crowd summaries, /who and
/rooms work from the replica with no question over the network.

The transport (``Link``) is pluggable: Redis in ``backplane/redis.py``, a list in the
tests.  Operations of one reactor turn go out as one envelope; envelopes of one node
carry consecutive sequence numbers, so a receiver notices a gap and asks for the
sender's whole state instead (``Node.reconcile``).
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from twisted_chat.backplane.history import STREAM, NetworkHistory, entry_json, to_id
from twisted_chat.core.errors import NetworkUnavailable
from twisted_chat.core.events import Event, Private
from twisted_chat.core.interfaces import INetwork
from twisted_chat.core.moderation import parse_network
from twisted_chat.core.names import skeletons

if TYPE_CHECKING:
    from twisted_chat.core.service import ChatService, Member

LOST_WITH_SERVER = "lost with its server"
APART_MAX = 1000  # room actions kept to publish again after a split
# Not published again: a room made apart is not the network's room, and the network
# chooses its own heirs.
NOT_REPLAYED = frozenset({"found", "heir"})
FALLBACK_GUESTS = 10**6  # guest numbers from here on are given out during a split
_GUEST_NUMBER = re.compile(r"guest([0-9]+)")


class Batching(Protocol):
    """What gathers output: the core alone, or the front doors' batcher around it."""

    def begin_batch(self) -> None: ...

    def end_batch(self) -> None: ...


class Link(Protocol):
    """What a node needs from its transport."""

    def connected(self) -> bool:
        """Whether the network can be reached now."""
        ...

    def publish(
        self,
        envelope: bytes,
        seq: int,
        state: dict[str, str | None],
        lines: Sequence[tuple[str, str]] = (),
    ) -> defer.Deferred[list[Any]] | None:
        """Send ``envelope`` to every other node, and store ``state`` as this node's
        (member id -> its description, None for a member that is gone) with ``seq``,
        at once, so a node reading the state knows which envelopes it covers.  ``lines``
        (stream, line): room lines to keep in history, in the same step; the Deferred
        fires with their ids, which the envelope carries too (``"h"``)."""
        ...

    def claim(self, keys: list[str], owner: str) -> defer.Deferred[bool]:
        """Take every key for ``owner`` unless another live owner holds one of them."""
        ...

    def release(self, keys: list[str], owner: str) -> None:
        """Give up the keys ``owner`` holds."""
        ...

    def save_room(self, key: str, state: str | None, born: str) -> None:
        """Keep a room's moderation state for nodes to come, unless a newer one of the
        same incarnation ``born`` is kept (None: forget that incarnation)."""
        ...


def describe(member: Member) -> str:
    """A member's state as other nodes store it (see ``Node.reconcile``)."""
    return json.dumps(
        {"nick": member.nick, "rooms": [r.name for r in member.rooms.values()],
         "login": member.logged_in, "addr": member.address},
        separators=(",", ":"),
    )  # fmt: skip


@implementer(INetwork)
class Node:
    """This node, as the core's ``INetwork``, and the receiver of the others' envelopes."""

    log = Logger()

    def __init__(self, node_id: str, clock: IReactorTime, link: Link) -> None:
        self.id = node_id
        self.clock = clock
        self.link = link
        self.service: ChatService | None = None
        self.batching: Batching | None = None
        self.seq = 0
        self._ops: list[dict[str, Any]] = []
        self._touched: dict[int, Member] = {}
        self._flush_call: IDelayedCall | None = None
        self.seen: dict[str, int] = {}  # the last sequence number applied, by node
        # The rooms' history kept over the network, if any (see backplane/history.py).
        self.history: NetworkHistory | None = None
        self._lines: list[tuple[str, str]] = []  # this turn's, for the history streams
        # Filled by the transport (a Redis INCRBY block) so no two nodes name guests alike.
        self.guests: list[int] = []
        self._fallback = itertools.count(random.randrange(FALLBACK_GUESTS, 10**7, 1000))
        # Asks the transport to read a node's stored state and hand it to ``reconcile``:
        # called with (node, announced) when the node announced it (it is new, or back
        # after a split) or when its envelopes cannot be applied in order (a gap).
        self.on_read: Callable[[str, bool], None] = lambda node, announced: None
        # Nodes whose state is being read, and their envelopes that arrived meanwhile.
        self._reading: dict[str, list[dict[str, Any]]] = {}
        # Called with the seconds this node's own heartbeat took to come back.
        self.on_beat: Callable[[float], None] = lambda lag: None
        # Traffic, for --metrics: envelopes (heartbeats included) and their bytes, sent
        # by this node and received from the others (this node's own echo not counted).
        self.envelopes_out = self.envelopes_in = 0
        self.bytes_out = self.bytes_in = 0
        # False while this node (re)joins, until its rooms' state is settled with the
        # network's: meanwhile its members' moderation is applied here alone, as apart.
        self.moderating = True
        # This node's members with room actions on their way through the network, so an
        # action still applies here in the network's order if its member left meanwhile.
        self._acting: dict[int, tuple[Member, int]] = {}
        # Room actions applied here alone (apart, rejoining, or Redis not taking them):
        # published again once the network is back, to be checked and applied by every
        # node in its order (the network's state of the room having replaced this one's).
        self._apart: list[dict[str, Any]] = []
        self._room_ops: list[dict[str, Any]] = []  # this turn's room actions

    def attach(self, service: ChatService, batching: Batching | None = None) -> None:
        """Serve ``service``; ``batching`` (the front doors' output batcher) gathers what
        other nodes' operations cause, so each member gets one write per read from the
        network rather than one per message."""
        self.service = service
        self.batching = service if batching is None else batching

    # -- INetwork: what this node's members do ----------------------------------------

    def arbitrates(self) -> bool:
        return self.link.connected()

    def claim(self, nick: str, member_id: int) -> defer.Deferred[bool] | None:
        if not self.link.connected():
            return None  # split: granted here, claimed again when the network is back
        d = self.link.claim(list(skeletons(nick)), self.owner(member_id))
        return d.addErrback(self._unanswered)

    def _unanswered(self, failure: Any) -> bool:
        self.log.failure("claiming a name failed", failure)
        raise NetworkUnavailable("the other servers did not answer; try again in a moment")

    def unclaim(self, nick: str, member_id: int) -> None:
        if self.link.connected():
            self.link.release(list(skeletons(nick)), self.owner(member_id))

    def guest_number(self) -> int | None:
        if self.guests:
            return self.guests.pop(0)
        # No block from the network (split): numbers no block reaches, unlikely to meet
        # another node's; a clash is settled when the network is back.
        return next(self._fallback)

    def guest_floor(self) -> int:
        """The highest guest number (below the split fallback's) known to be given out or
        reserved: a network counter that restarted (Redis lost its data) is raised past
        it, so new blocks do not hand out names members hold."""
        assert self.service is not None
        high = max(self.guests, default=0)
        for member in self.service.by_id.values():
            found = _GUEST_NUMBER.fullmatch(member.nick)
            if found is not None and int(found[1]) < FALLBACK_GUESTS:
                high = max(high, int(found[1]))
        return high

    def owner(self, member_id: int) -> str:
        """Who holds a name in the arbiter: a member here, or one about to connect."""
        return f"{self.id}/{member_id}"

    def arrived(self, member: Member) -> None:
        self._op(member, op="arrive", nick=member.nick, login=member.logged_in,
                 addr=member.address)  # fmt: skip
        self._confirm(member)

    def _confirm(self, member: Member) -> None:
        """Tell the arbiter the name ``member`` holds now.  A guest's name was granted
        here (a login's or a chosen one's was claimed before, and is confirmed): the
        arbiter has the last word, and a name it gave to another member is given up."""
        if not self.link.connected():
            return
        nick = member.nick
        d = self.link.claim(list(skeletons(nick)), self.owner(member.id))
        d.addCallback(self._confirmed, member, nick)
        d.addErrback(self._log_failure, "claiming a member's name")

    def _confirmed(self, granted: bool, member: Member, nick: str) -> None:
        if not granted and member.nick == nick and self.service is not None:
            self.service.lost_name(member, f"{nick} is held on another server")

    def joined(self, member: Member, room: str) -> None:
        self._op(member, op="join", room=room)

    def parted(self, member: Member, room: str, reason: str) -> None:
        self._op(member, op="part", room=room, reason=reason)

    def talked(self, member: Member, event: Event) -> None:
        text = getattr(event, "text_", "")
        self._op(
            member, False, op="say", kind=event.type, room=getattr(event, "room", ""),
            text=text, ts=event.ts,
        )  # fmt: skip
        if self.history is not None and member.current is not None:
            line = entry_json(event.ts, event.type, member.nick, text)
            self._lines.append((STREAM + member.current.key, line))

    def whispered(self, member: Member, target: Member, event: Event) -> None:
        assert isinstance(event, Private)
        self._op(member, False, op="pm", to=[target.node, target.id], text=event.text_,
                 ts=event.ts)  # fmt: skip

    def renamed(self, member: Member, old: str) -> None:
        self._op(member, op="nick", nick=member.nick)
        if self.link.connected():
            self.link.release(sorted(set(skeletons(old)) - set(skeletons(member.nick))),
                              self.owner(member.id))  # fmt: skip
        self._confirm(member)

    def left(self, member: Member, kind: str, reason: str, after: float) -> None:
        self._op(member, op="leave", kind=kind, reason=reason, after=after)
        if self.link.connected():
            self.link.release(list(skeletons(member.nick)), self.owner(member.id))

    def operated(self, member: Member, action: str, **data: Any) -> None:
        self._op(member, False, op="srv", action=action, **data)

    def moderated(self, member: Member, action: str, **data: Any) -> bool:
        if not self.link.connected() or not self.moderating:
            # Apart: applied here now, and published again when the network is back.
            if len(self._apart) < APART_MAX and action not in NOT_REPLAYED:
                by = [member.node or self.id, member.id]
                self._apart.append({"op": "room", "action": action, "by": by, **data})
            return False
        # ``member`` may be another node's (an heir chosen here), so it goes by name.
        by = [member.node or self.id, member.id]
        self._queue_action({"op": "room", "action": action, "by": by, **data}, member)
        return True

    def _queue_action(self, op: dict[str, Any], member: Member) -> None:
        """A room action for this turn's envelope; its member (this node's) is kept
        until the action comes back, in case it leaves meanwhile."""
        self._room_ops.append(op)
        self._queue(op)
        if not member.node:
            _, count = self._acting.get(member.id, (member, 0))
            self._acting[member.id] = (member, count + 1)

    def _own(self, ops: list[dict[str, Any]], apart: bool = False) -> None:
        """This node's room actions, back from the network (or, ``apart``, not sent
        after all: applied here alone, and published again when the network is back)."""
        service = self.service
        assert service is not None
        if apart:
            again = [op for op in ops if op.get("action") not in NOT_REPLAYED]
            self._apart.extend(again[: max(0, APART_MAX - len(self._apart))])
        with self.batch():
            for op in ops:
                node, mid = op["by"]
                departed: Member | None = None
                acting = self._acting.pop(int(mid), None) if node == self.id else None
                if acting is not None:
                    member, count = acting
                    if count > 1:
                        self._acting[int(mid)] = (member, count - 1)
                    if not member.present:  # left since: checked as it was typed
                        departed = member
                try:
                    service.moderator.replicated(str(op["action"]), op, departed)
                except Exception:
                    self.log.failure("applying this node's {action} failed", action=op["action"])

    def keep_room(self, key: str, state: str | None, born: str) -> None:
        if self.link.connected():
            self.link.save_room(key, state, born)

    def share_room(self, key: str, state: str) -> None:
        """This node's state of a room won over the network's (it comes back after a
        split, or Redis lost it): every other node takes it."""
        self._queue({"op": "state", "key": key, "state": state})

    def merged(self, key: str, sent: str, written: bool, kept: str | None) -> None:
        """Redis settled a room's state as this node (re)joined (``sent``: this node's):
        what was written, the others take; what was kept instead, this node takes."""
        if written:
            self.share_room(key, sent)
        elif kept is not None and kept != sent:
            assert self.service is not None
            self.service.moderator.restore(key, kept)

    def replay_apart(self) -> None:
        """The rooms' state is settled with the network's: the room actions applied
        here alone meanwhile go out again, each checked where it falls in the network's
        order (an operator's ban holds; what a member could do only apart is refused)."""
        ops, self._apart = self._apart, []
        for op in ops:
            node, mid = op["by"]
            member = self.service.by_id.get(("", int(mid))) if self.service else None
            if node != self.id or member is None:
                continue  # (an heir chosen apart: the network chooses again)
            self._queue_action(op, member)

    def share_bans(self, rows: list[tuple[str, str, str]]) -> None:
        """Every server ban this node knows: the others add those they lack."""
        self._queue({"op": "bans", "rows": [list(row) for row in rows]})

    def _op(self, member: Member, changes: bool = True, **op: Any) -> None:
        """Queue ``op`` for this turn's envelope; ``changes``: it changes the member's
        stored state (talking does not, so the state is not written again for it)."""
        op["m"] = member.id
        if changes:
            self._touched[member.id] = member
        self._queue(op)

    def _queue(self, op: dict[str, Any]) -> None:
        self._ops.append(op)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Send this turn's operations as one envelope, with the members' new state."""
        self._flush_call = None
        if not self._ops:
            return
        ops, self._ops = self._ops, []
        touched, self._touched = self._touched, {}
        lines, self._lines = self._lines, []
        history = self.history
        own, self._room_ops = self._room_ops, []
        if not self.link.connected():
            if history is not None:
                history.unnumbered(len(lines))
            if own:  # moderation meant to come back from the network: applied here alone
                self._own(own, apart=True)
            return  # split: the state is sent whole when the network is back
        state = {str(mid): describe(m) if m.present else None for mid, m in touched.items()}
        try:
            # Flagged when it holds room actions: this node applies them as it comes back.
            flag = {"mod": 1} if own else {}
            sent = self.link.publish(self._envelope(ops, **flag), self.seq, state, lines)
        except Exception:
            self.log.failure("publishing to the network failed")
            sent = None
            if own:
                self._own(own, apart=True)
        if sent is not None:
            if own:
                sent.addErrback(self._not_sent, own)
            if history is not None and lines:
                sent.addCallbacks(history.numbered, lambda _: history.unnumbered(len(lines)))
            sent.addErrback(lambda _: None)  # reported by the link
        elif history is not None and lines:
            history.unnumbered(len(lines))

    def announcement(self) -> tuple[bytes, int, dict[str, str | None]]:
        """What this node publishes when it joins or rejoins: an envelope that makes every
        other node read its state, its number, and the whole state."""
        return self._envelope([], whole=True), self.seq, self.whole_state()

    def beat(self) -> bytes:
        """A heartbeat for the channel: when it was sent (this node measures how late it
        reads) and the last envelope sent before it (the others notice one they missed)."""
        beat = {"node": self.id, "seq": self.seq, "beat": self.clock.seconds()}
        return self._sent(json.dumps(beat, separators=(",", ":")).encode())

    def _envelope(self, ops: list[dict[str, Any]], **extra: Any) -> bytes:
        self.seq += 1
        envelope = {"node": self.id, "seq": self.seq, "ops": ops, **extra}
        return self._sent(json.dumps(envelope, separators=(",", ":")).encode())

    def _sent(self, data: bytes) -> bytes:
        self.envelopes_out += 1
        self.bytes_out += len(data)
        return data

    def whole_state(self) -> dict[str, str | None]:
        """Every member of this node, described."""
        assert self.service is not None
        return {str(m.id): describe(m) for m in self.service.members}

    # -- other nodes' envelopes ---------------------------------------------------------

    def received(self, data: bytes) -> None:
        """An envelope from the network (possibly this node's own, which is skipped)."""
        try:
            envelope = json.loads(data)
            node, seq = str(envelope["node"]), int(envelope["seq"])
            sent = envelope.get("beat")
            ops = envelope["ops"] if sent is None else []
            if sent is not None:
                sent = float(sent)
        except (ValueError, KeyError, TypeError):
            self.log.warn("unreadable envelope from the network: {data!r}", data=data[:200])
            return
        if node != self.id:
            self.envelopes_in += 1
            self.bytes_in += len(data)
        if sent is not None:
            self._beat(node, seq, sent)
        elif node != self.id:
            numbers = envelope.get("h")
            if numbers:
                _number(ops, numbers)
            self._take(node, seq, ops, bool(envelope.get("whole")))
        elif envelope.get("mod"):  # this node's own, with room actions: applied now, in
            # the network's order (its other envelopes were acted on as they were sent)
            self._own([op for op in ops if isinstance(op, dict) and op.get("op") == "room"])

    def _beat(self, node: str, seq: int, sent: float) -> None:
        if node == self.id:
            self.on_beat(max(0.0, self.clock.seconds() - sent))
            return
        if node in self._reading:
            return  # the state being read covers it
        last = self.seen.get(node)
        if last is None or seq > last:  # an envelope sent before it never arrived
            self._read(node, announced=False)

    def _take(self, node: str, seq: int, ops: list[dict[str, Any]], whole: bool) -> None:
        pending = self._reading.get(node)
        if pending is not None:
            pending.append({"seq": seq, "ops": ops, "whole": whole})  # after the state
            return
        last = self.seen.get(node)
        if whole or last is None or seq > last + 1:
            # New, back after a split, or envelopes missed: its stored state is read.
            self._read(node, announced=whole)
            return
        if seq == last + 1:
            self.seen[node] = seq
            self.apply(node, ops)
        # else: already covered by a state read after it was sent

    def _read(self, node: str, announced: bool) -> None:
        self._reading[node] = []  # its envelopes wait here until the state is applied
        self.on_read(node, announced)

    def abandon_reads(self) -> None:
        """The network is lost: reads in progress will never answer."""
        self._reading.clear()

    def apply(self, node: str, ops: list[dict[str, Any]]) -> None:
        service = self.service
        assert service is not None
        with self.batch():
            for op in ops:
                try:
                    self._apply_one(service, node, op)
                except Exception:
                    self.log.failure("applying {op} from {node} failed", op=op.get("op"), node=node)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Around what one read from the network causes (envelopes, a state read)."""
        batching = self.batching
        assert batching is not None
        batching.begin_batch()
        try:
            yield
        finally:
            batching.end_batch()

    def _apply_one(self, service: ChatService, node: str, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "room":
            service.moderator.replicated(str(op["action"]), op)
            return
        if kind == "state":
            service.moderator.offered(str(op["key"]), str(op["state"]), node)
            return
        if kind == "bans":
            rows = [(str(n), str(by), str(why)) for n, by, why in op["rows"]]
            service.moderator.server_bans.load(rows)
            return
        mid = int(op["m"])
        if kind == "arrive":
            service.remote_arrive(
                node, mid, str(op["nick"]), bool(op.get("login")), str(op.get("addr", ""))
            )
            return
        member = service.by_id.get((node, mid))
        if member is None:
            return
        if kind == "join":
            service.remote_join(member, str(op["room"]))
        elif kind == "part":
            service.remote_part(member, str(op["room"]), str(op.get("reason", "")))
        elif kind == "say":
            hid = op.get("hid")
            service.remote_talk(
                member, str(op["kind"]), str(op["room"]), str(op["text"]), float(op["ts"]),
                None if hid is None else int(hid),
            )  # fmt: skip
        elif kind == "pm":
            to_node, to_id = op["to"]
            target = service.by_id.get(("", int(to_id))) if to_node == self.id else None
            if target is not None:
                service.remote_private(member, target, str(op["text"]), float(op["ts"]))
        elif kind == "nick":
            service.remote_rename(member, str(op["nick"]))
        elif kind == "srv":
            self._server_wide(service, member, op)

        elif kind == "leave":
            service.remote_leave(
                member, str(op["kind"]), str(op.get("reason", "")), float(op.get("after", 0.0))
            )

    def _server_wide(self, service: ChatService, operator: Member, op: dict[str, Any]) -> None:
        """A server operator elsewhere acted on the whole network (checked there)."""
        moderator = service.moderator
        action = str(op["action"])
        if action == "wall":
            moderator.notice_all(operator.nick, str(op["text"]))
        elif action == "kill":
            to_node, to_id = op["target"]
            target = service.by_id.get(("", int(to_id))) if to_node == self.id else None
            if target is not None:
                moderator.disconnect(operator.nick, target, str(op.get("reason", "")))
        elif action in ("gban", "gunban"):
            network = parse_network(str(op["network"]))
            if action == "gban":
                moderator.ban_network(operator.nick, network, str(op.get("reason", "")))
            else:
                moderator.unban_network(operator.nick, network)

    def begin_read(self, node: str) -> None:
        """The transport starts reading ``node``'s stored state (``read_done`` follows)."""
        self._reading.setdefault(node, [])

    def read_done(self, node: str, seq: int | None, state: dict[str, str]) -> None:
        """A read of ``node``'s state answered.  Dropped when the node was forgotten (or
        the network lost) while it was under way: it must not bring its members back."""
        if node not in self._reading:
            self.log.info("backplane: a read of node {node} answered too late", node=node)
            return
        self.reconcile(node, seq, state)

    def reconcile(
        self, node: str, seq: int | None, state: dict[str, str], reason: str = "disconnected"
    ) -> None:
        """Make this replica of ``node`` match its stored ``state`` (read after ``seq``).

        Members missing from it leave with ``reason``; new ones arrive; names and rooms
        are brought up to date, each change told to this node's members as usual.
        """
        service = self.service
        assert service is not None
        if seq is not None:
            self.seen[node] = seq
        else:
            self.seen.pop(node, None)
        wanted: dict[int, dict[str, Any]] = {}
        for key, value in state.items():
            try:
                wanted[int(key)] = json.loads(value)
            except (ValueError, TypeError):
                continue
        with self.batch():
            for member in service.remote_members(node):
                if member.id not in wanted:
                    service.remote_leave(member, "disconnect", reason)
            joins = []
            for mid, desc in wanted.items():
                nick, login = str(desc["nick"]), bool(desc.get("login"))
                member = service.remote_arrive(node, mid, nick, login, str(desc.get("addr", "")))
                service.remote_rename(member, nick)
                rooms = [str(r) for r in desc.get("rooms", [])]
                for room in list(member.rooms.values()):
                    if room.name not in rooms:
                        service.remote_part(member, room.name, "")
                joins.append((member, rooms))
            # Every part before any join: a room all of whose members left meanwhile
            # goes, and one made again since is a new room, not the old one's state.
            for member, rooms in joins:
                for room_name in rooms:
                    if not service.is_member_of(member, room_name):
                        service.remote_join(member, room_name)
        for envelope in self._reading.pop(node, []):
            self._take(node, envelope["seq"], envelope["ops"], envelope["whole"])

    def forget(self, node: str, reason: str = LOST_WITH_SERVER) -> None:
        """``node`` is gone: its members leave everyone here with ``reason``."""
        self.reconcile(node, None, {}, reason)

    def _not_sent(self, failure: Any, own: list[dict[str, Any]]) -> Any:
        """Redis did not take an envelope (it hung, or went): its room actions are
        applied here alone, as during a split, and settled when the network is back."""
        self._own(own, apart=True)
        return failure

    def _log_failure(self, failure: Any, what: str) -> None:
        self.log.failure("{what} failed", failure, what=what)


def _number(ops: list[dict[str, Any]], numbers: list[Any]) -> None:
    """Give each "say" operation, in order, the history id its envelope carries."""
    said = (op for op in ops if isinstance(op, dict) and op.get("op") == "say")
    for op, stream_id in zip(said, numbers, strict=False):
        try:
            op["hid"] = to_id(str(stream_id))
        except ValueError:
            return
