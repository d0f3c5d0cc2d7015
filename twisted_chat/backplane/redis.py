"""The Redis backplane: nodes of one network meet in one Redis (``--backplane``).

Keys (prefix ``gc:``):

- ``gc:ops``: the pub/sub channel every node publishes its envelopes to and reads.
- ``gc:nodes``: the set of node ids; ``gc:lease:<node>`` exists while the node lives
  (set with a ``PX`` expiry, renewed every ``lease / 3``).
- ``gc:node:<node>``: a hash, ``m:<id>`` -> a member's description, ``seq`` -> the last
  envelope it covers; written with each envelope in one script, so it never disagrees
  with what was published.
- ``gc:nick:<key>``: ``<node>/<id>`` for each look-alike key of a held nickname; a key
  whose node has no lease is free.  ``gc:nicks:<node>`` lists a node's keys.
- ``gc:rooms``: a hash, room key -> the room's moderation state (topic, operators,
  mutes, bans; ``Moderator.snapshot``), written by the node where it changed, never
  over a newer state of the same incarnation of the room (``_KEEP_ROOM``).
- ``gc:gbans``: a hash, network -> [by, reason]: the server bans.
- ``gc:guests``: a counter; each node takes blocks of guest numbers from it, raising it
  first past every guest number it knows of when it (re)joins (Redis may have lost it).

txredisapi does the connecting and reconnecting (with backoff, through Twisted's
``ClientService``); this module decides what a lost or regained Redis means.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twisted_chat.backplane.history import ROOMS, STREAM, parse_entry
from twisted_chat.backplane.replica import LOST_WITH_SERVER, Node
from twisted_chat.core.names import skeletons

PREFIX = "gc:"
CHANNEL = PREFIX + "ops"
GBANS = PREFIX + "gbans"  # network -> [by, reason]: the server bans, for nodes to come
ROOM_STATES = PREFIX + "rooms"  # room key -> its moderation state, for nodes to come
SUBSCRIBER_NAME = "gc-sub-"  # + node id: the client name of a node's subscription
LEASE = 5.0  # seconds a node lives without renewing; its members are then removed
LEAVE_TIMEOUT = 2.0  # seconds a stopping node waits for Redis to drop its state
GUEST_BLOCK = 100
CLAIMS_AT_ONCE = 1000  # names re-claimed in one pipelined run when (re)joining
# A node is reported as falling behind when its own heartbeat comes back this late, or
# when Redis holds this much output for its subscription (Redis drops a subscriber whose
# buffer passes its client-output-buffer-limit: 32 MiB, or 8 MiB for a minute, by default).
SLOW_LAG = 1.0
SLOW_BACKLOG = 1 << 20
REPORT_EVERY = 30.0  # seconds between two reports of the same slow node

# Every other script argument is data: these run atomically inside Redis.
# ARGV: channel, envelope, seq, the number of history lines, the streams' cap, the set
# of streams, the oldest stream id to keep ('' for no limit by age), then (stream, line)
# for each history line, then (field, description) for
# each member whose state changed. The lines' stream ids go out in the envelope ("h").
_PUBLISH = """
local hash = KEYS[1]
redis.call('HSET', hash, 'seq', ARGV[3])
local lines = tonumber(ARGV[4])
local ids = {}
local i = 8
for n = 1, lines do
  ids[n] = redis.call('XADD', ARGV[i], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[i + 1])
  if ARGV[7] ~= '' then redis.call('XTRIM', ARGV[i], 'MINID', '~', ARGV[7]) end
  redis.call('SADD', ARGV[6], ARGV[i])
  i = i + 2
end
for j = i, #ARGV, 2 do
  if ARGV[j + 1] == '' then redis.call('HDEL', hash, ARGV[j])
  else redis.call('HSET', hash, ARGV[j], ARGV[j + 1]) end
end
local envelope = ARGV[2]
if lines > 0 then
  envelope = string.sub(envelope, 1, -2) .. ',"h":["' .. table.concat(ids, '","') .. '"]}'
end
redis.call('PUBLISH', ARGV[1], envelope)
return ids
"""
_CLAIM = """
local me = ARGV[1]
for _, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v and v ~= me then
    local node = string.match(v, '^(.*)/')
    if node and redis.call('EXISTS', ARGV[2] .. node) == 1 then return 0 end
  end
end
for _, k in ipairs(KEYS) do
  redis.call('SET', k, me)
  redis.call('SADD', ARGV[3], k)
end
return 1
"""
_RELEASE = """
for _, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
  redis.call('SREM', ARGV[2], k)
end
return 1
"""
# A block of guest numbers, after raising the counter to at least ARGV[1] (a counter that
# restarted must not give out numbers members hold).
# Replace a hash's fields with ARGV's (field, value) pairs, in one step.
_REPLACE_HASH = """
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return #ARGV / 2
"""
_GUESTS = """
local top = tonumber(redis.call('GET', KEYS[1]) or '0')
if top < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('INCRBY', KEYS[1], ARGV[2])
"""
# A node gone, or back after a split: its names and state are dropped (it re-claims).
# ARGV[2], when given, is its lease: a node that renewed it meanwhile is left alone.
_RESET = """
if ARGV[2] and redis.call('EXISTS', ARGV[2]) == 1 then return -1 end
local keys = redis.call('SMEMBERS', KEYS[2])
for _, k in ipairs(keys) do
  local v = redis.call('GET', k)
  if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '/' then redis.call('DEL', k) end
end
redis.call('DEL', KEYS[1], KEYS[2])
return #keys
"""


@dataclass(frozen=True)
class RedisAddress:
    """What ``--backplane redis://[:PASSWORD@]HOST:PORT[/DB]`` names."""

    host: str
    port: int
    password: str | None
    db: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// address: {url!r}")
        try:
            port = parts.port or 6379
            db = int(parts.path.strip("/") or 0)
        except ValueError as e:
            raise ValueError(f"bad port or database number in {url!r}") from e
        password = unquote(parts.password) if parts.password else None
        if password is None and parts.username and not parts.password:
            password = unquote(parts.username)  # redis://secret@host: a password alone
        return cls(parts.hostname or "127.0.0.1", port, password, db, parts.scheme == "rediss")

    def endpoint(self, reactor: Any) -> Any:
        if self.tls:
            from twisted.internet import ssl

            options = ssl.optionsForClientTLS(self.host)
            return endpoints.wrapClientTLS(
                options, endpoints.HostnameEndpoint(reactor, self.host, self.port)
            )
        return endpoints.HostnameEndpoint(reactor, self.host, self.port)


class _Subscriber(txredisapi.SubscriberProtocol):
    link: RedisLink

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        # Everything one read brings (often many envelopes) is one batch: each member
        # gets one write for all of it, as for one chunk of a client's input.
        with self.link.node.batch():
            super().dataReceived(data, unpause)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        data = message if isinstance(message, bytes) else str(message).encode()
        self.link.envelope(data)


class _SubscriberFactory(txredisapi.SubscriberFactory):
    protocol = _Subscriber
    link: RedisLink

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        p.link = self.link
        p.whenConnected().addCallback(self.link.subscriber_up)
        return p


# KEYS[1]: the rooms' hash. ARGV: room key, state (JSON with born, bt, v), born, and the
# mode: 'keep' (after an action: newer than what is kept, or another incarnation),
# 'drop' (the room emptied: forget it if it is that incarnation) or 'merge' (a node
# (re)joins; ARGV[5] '1' when the room has members of other nodes: then, of two
# incarnations, the older is the room and wins). Returns {1, state} when it was
# written, {0, the state kept} when not.
_KEEP_ROOM = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local mode = ARGV[4]
local ok, old = false, nil
if cur then ok, old = pcall(cjson.decode, cur) end
if mode == 'drop' then
  if cur and (not ok or old.born == ARGV[3]) then redis.call('HDEL', KEYS[1], ARGV[1]) end
  return {0}
end
local take = true
if cur and ok then
  local new = cjson.decode(ARGV[2])
  if old.born == new.born then
    -- The same room: newer after an action; the network's when a node comes back
    -- (what it did apart it publishes again, to be checked in the network's order).
    take = mode == 'keep' and tonumber(new.v) > tonumber(old.v)
  elseif mode == 'merge' and ARGV[5] == '1' then
    local nbt, obt = tonumber(new.bt), tonumber(old.bt)
    local older = nbt < obt or (nbt == obt and new.born < old.born)
    take = old.born == '' or (new.born ~= '' and older)
  end
end
if take then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return {1, ARGV[2]}
end
return {0, cur}
"""


class RedisLink(service.Service):
    """This node's place in a Redis network: the ``Link`` of ``replica.Node``."""

    log = Logger()
    name = "groupchat-backplane"

    def __init__(
        self, address: RedisAddress, clock: IReactorTime, reactor: Any, lease: float = LEASE
    ) -> None:
        self.address = address
        self.clock = clock
        self.reactor = reactor
        self.lease = lease
        # Never all digits: a reply that looks like a number must stay a node id.
        self.node = Node("n" + uuid.uuid4().hex[:11], clock, self)
        self.node.on_read = self._read_state
        self._up = False  # joined: subscribed, state announced, others read
        self._was_up = False
        self._command_factory: Any = None
        self._commands: Any = None
        self._sub_factory: Any = None
        self._subscriber: Any = None
        self._buffer: list[bytes] | None = None  # envelopes read while (re)joining
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.clock = clock
        self._fetching_guests = False
        self._joined_at = 0.0
        self._renewing: float | None = None  # when the unanswered lease renewal was sent
        self._watching = False  # a renewal and the look at the other nodes under way
        # How far behind this node reads the channel, from its own heartbeats (seconds),
        # and what Redis holds for each node's subscription (bytes, by node id).
        self.lag = 0.0
        self.backlogs: dict[str, int] = {}
        self._reported: dict[str, float] = {}  # node id -> when it was last reported slow
        self._watch_backlogs = True  # off when Redis refuses CLIENT LIST (a managed Redis)
        self.node.on_beat = self._beat_back
        self.history_keep = 5000  # entries kept per room's stream (``--history-keep``)
        self.history_days: float | None = None  # and for how long (``--history-days``)

    # -- lifecycle ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        endpoint = self.address.endpoint(self.reactor)
        self._command_factory = txredisapi.RedisFactory(
            None, self.address.db, 1, isLazy=True, password=self.address.password,
            # No timeout per command: one fires on this node's clock, so after the
            # reactor was busy for a while it fires before the answer, already here, is
            # read. A Redis that hangs is found by the lease renewal (``_heartbeat``).
            replyTimeout=None, convertNumbers=False,
        )  # fmt: skip
        self._command_factory.startConnecting(endpoint)
        self._commands = self._command_factory.handler
        self._sub_factory = _SubscriberFactory(isLazy=True)
        self._sub_factory.password = self.address.password
        self._sub_factory.link = self
        self._sub_factory.startConnecting(endpoint)
        self._beat.start(self.lease / 3, now=False)
        self.log.info(
            "backplane: node {node} joining redis at {host}:{port}",
            node=self.node.id, host=self.address.host, port=self.address.port,
        )  # fmt: skip

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._beat.running:
            self._beat.stop()
        if self._up:
            try:
                # Not for longer than a moment: a Redis that hangs must not keep the
                # server from stopping (the others then forget this node by its lease).
                yield self._forget_node(self.node.id).addTimeout(LEAVE_TIMEOUT, self.clock)
            except Exception:
                self.log.failure("leaving the network cleanly failed")
        self._up = False
        for factory in (self._sub_factory, self._command_factory):
            if factory is not None:
                yield factory.disconnect()

    # -- Link ----------------------------------------------------------------------------

    def connected(self) -> bool:
        return self._up

    def publish(
        self,
        envelope: bytes,
        seq: int,
        state: dict[str, str | None],
        lines: Sequence[tuple[str, str]] = (),
    ) -> defer.Deferred[list[Any]]:
        d = self._publish(envelope, seq, state, lines)

        def lost(failure: Any) -> Any:
            self._lost_command(failure, "publishing")
            return failure  # the node applies what it meant to publish (replica.Node)

        return d.addErrback(lost)

    def _publish(
        self,
        envelope: bytes,
        seq: int,
        state: dict[str, str | None],
        lines: Sequence[tuple[str, str]] = (),
    ) -> Any:
        minid = ""
        if lines and self.history_days is not None:
            minid = str(int((self.clock.seconds() - self.history_days * 86400) * 1000))
        args: list[Any] = [CHANNEL, envelope, seq, len(lines), self.history_keep, ROOMS, minid]
        for stream, line in lines:
            args += [stream, line]
        for mid, desc in state.items():
            args += [f"m:{mid}", desc or ""]
        return self._commands.eval(_PUBLISH, keys=[self._node_key(self.node.id)], args=args)

    def read_back(self, stream: str, before: str, count: int) -> defer.Deferred[Any]:
        """A stream's entries before ``before`` (``(`` for exclusive), newest first."""
        d: defer.Deferred[Any] = self._commands.execute_command(
            "XREVRANGE", stream, before, "-", "COUNT", count
        )
        return d

    def save_server_bans(self, bans: list[tuple[str, str, str]]) -> None:
        """Every server ban (network, by, reason), kept in Redis for the nodes to come:
        the whole set replaced (each node applying a ban writes the set it then has)."""
        if not self._up:
            return
        rows = {network: json.dumps([by, reason]) for network, by, reason in bans}
        d = self._commands.eval(
            _REPLACE_HASH, keys=[GBANS], args=[x for kv in rows.items() for x in kv]
        )
        d.addErrback(self._lost_command, "saving server bans")

    def save_room(self, key: str, state: str | None, born: str) -> None:
        if not self._up:
            return
        mode = "keep" if state is not None else "drop"
        d = self._commands.eval(
            _KEEP_ROOM, keys=[ROOM_STATES], args=[key, state or "", born, mode, "0"]
        )
        d.addErrback(self._lost_command, "keeping a room's state")

    @defer.inlineCallbacks
    def _merge_rooms(self) -> Any:
        """Each room's moderation, settled with the network's as this node (re)joins
        (after reading the other nodes' members, who are the rooms' members): the kept
        state wins unless this node's is newer, or the older incarnation of a room the
        network shares (a room made here while apart is not the network's room), or
        Redis lost it. What this node wrote, the others take; what it read, it takes."""
        service = self.node.service
        if service is None:
            return
        moderator = service.moderator
        rooms = list(service.rooms.rooms())
        for start in range(0, len(rooms), CLAIMS_AT_ONCE):  # pipelined, in bounded runs
            batch = rooms[start : start + CLAIMS_AT_ONCE]
            sent = [moderator.snapshot(room) for room in batch]
            answers = yield defer.gatherResults(
                [self._merge_room(room, state) for room, state in zip(batch, sent, strict=True)],
                consumeErrors=True,
            )
            for room, state, answer in zip(batch, sent, answers, strict=True):
                kept = _text(answer[1]) if len(answer) > 1 else None
                self.node.merged(room.key, state, bool(int(answer[0])), kept)

    @defer.inlineCallbacks
    def _sweep_rooms(self) -> Any:
        """Forget the kept state of rooms nobody is in (their last node was lost, or
        Redis was out of reach as they emptied): each only if it is still the
        incarnation read here, so a room made meanwhile keeps its state."""
        service = self.node.service
        if service is None:
            return
        stored = yield self._commands.hgetall(ROOM_STATES)
        for key, value in (stored or {}).items():
            key = _text(key)
            if service.rooms.find(key) is not None:
                continue
            try:
                born = str(json.loads(_text(value)).get("born") or "")
            except (ValueError, AttributeError):
                born = ""
            yield self._commands.eval(
                _KEEP_ROOM, keys=[ROOM_STATES], args=[key, "", born, "drop", "0"]
            )

    def _merge_room(self, room: Any, state: str) -> Any:
        shared = "1" if any(m.node for m in room.members) else "0"
        args = [room.key, state, room.born, "merge", shared]
        return self._commands.eval(_KEEP_ROOM, keys=[ROOM_STATES], args=args)

    @defer.inlineCallbacks
    def _load_server_bans(self) -> Any:
        """The server bans made on the network, added to this node's (a node joining
        later, or back after a split, learns those made meanwhile)."""
        service = self.node.service
        if service is None:
            return
        stored = yield self._commands.hgetall(GBANS)
        rows = []
        for network, value in (stored or {}).items():
            try:
                by, reason = json.loads(_text(value))
            except (ValueError, TypeError):
                continue
            rows.append((_text(network), str(by), str(reason)))
        bans = service.moderator.server_bans
        bans.load(rows)
        # Ours and the network's together: kept for nodes to come (Redis may have lost
        # them), and told to the others, who add those they lack.
        mine = [(str(b.network), b.by, b.reason) for b in bans.bans.values()]
        if len(mine) > len(rows):
            self.save_server_bans(mine)
        if mine:
            self.node.share_bans(mine)

    @defer.inlineCallbacks
    def _load_history(self) -> Any:
        """Every room's last lines, read as this node joins (or rejoins) the network."""
        history = self.node.history
        if history is None:
            return
        streams = yield self._commands.smembers(ROOMS)
        for stream in sorted(_text(s) for s in streams):
            room = stream[len(STREAM) :]
            entries = yield self.read_back(stream, "+", history.tail)
            lines = [parse_entry(room, sid, fields) for sid, fields in entries or ()]
            history.loaded(room, [line for line in reversed(lines) if line is not None])

    def claim(self, keys: list[str], owner: str) -> defer.Deferred[bool]:
        d = self._commands.eval(
            _CLAIM, keys=[PREFIX + "nick:" + k for k in keys],
            args=[owner, PREFIX + "lease:", PREFIX + "nicks:" + self.node.id],
        )  # fmt: skip
        return d.addCallback(lambda answer: answer == 1)

    def release(self, keys: list[str], owner: str) -> None:
        if not keys:
            return
        d = self._commands.eval(
            _RELEASE, keys=[PREFIX + "nick:" + k for k in keys],
            args=[owner, PREFIX + "nicks:" + self.node.id],
        )  # fmt: skip
        d.addErrback(self._lost_command, "releasing a name")

    # -- joining and rejoining ---------------------------------------------------------

    def subscriber_up(self, protocol: Any) -> None:
        self._subscriber = protocol
        protocol.whenDisconnected().addCallback(self._subscriber_down)
        self._buffer = []
        # Named, so that every node can see in CLIENT LIST how far behind this one reads.
        d = protocol.execute_command("CLIENT", "SETNAME", SUBSCRIBER_NAME + self.node.id)
        d.addCallback(lambda _: protocol.subscribe(CHANNEL))
        d.addCallback(lambda _: self._join())
        d.addErrback(self._join_failed)

    @defer.inlineCallbacks
    def _join(self) -> Any:
        """Announce this node and read the others, with the channel already read."""
        node = self.node
        commands = self._commands
        yield commands.set(PREFIX + "lease:" + node.id, "1", pexpire=int(self.lease * 1000))
        yield commands.sadd(PREFIX + "nodes", node.id)
        yield self._refill_guests(floor=node.guest_floor())
        # Our names again, as the arbiter sees them: one that another node took while we
        # were apart is given up here (that member becomes a guest).
        yield commands.eval(
            _RESET, keys=[self._node_key(node.id), PREFIX + "nicks:" + node.id], args=[node.id]
        )
        assert node.service is not None
        present = list(node.service.members)
        for start in range(0, len(present), CLAIMS_AT_ONCE):  # pipelined, in bounded runs
            batch = present[start : start + CLAIMS_AT_ONCE]
            won = yield defer.gatherResults(
                [self.claim(list(skeletons(m.nick)), node.owner(m.id)) for m in batch],
                consumeErrors=True,
            )
            for member, granted in zip(batch, won, strict=True):
                if not granted:
                    node.service.lost_name(
                        member, f"while the network was split, {member.nick} was taken on "
                        "another server"
                    )  # fmt: skip
        yield self._publish(*node.announcement())
        others = yield commands.smembers(PREFIX + "nodes")
        alive = set()
        for other in sorted(others):
            other = _text(other)
            if other == node.id:
                continue
            if not (yield commands.exists(PREFIX + "lease:" + other)):
                continue
            alive.add(other)
            node.begin_read(other)
            yield self._read_node(other)
        # Nodes known here but not in Redis are not forgotten yet: after a restart of
        # Redis they announce themselves again within a lease (see _renew_and_watch).
        self._joined_at = self.clock.seconds()
        node.moderating = False  # until the rooms' state is settled below
        self._up = True
        try:
            yield self._load_history()
        except Exception:
            self.log.failure("reading the rooms' history from redis failed")
        try:
            yield self._load_server_bans()
        except Exception:
            self.log.failure("reading the server bans from redis failed")
        try:
            yield self._merge_rooms()
        except Exception:
            self.log.failure("settling the rooms' moderation with redis failed")
        finally:
            node.moderating = True
        node.replay_apart()
        buffered, self._buffer = self._buffer or [], None
        for data in buffered:
            node.received(data)
        try:
            yield self._sweep_rooms()
        except Exception:
            self.log.failure("forgetting rooms that are gone failed")
        if self._was_up:
            node.service.network_changed(True, "the network is whole again")
            self.log.info("backplane: node {node} rejoined the network", node=node.id)
        else:
            self.log.info("backplane: node {node} joined the network ({others} other {s})",
                          node=node.id, others=len(alive),
                          s="node" if len(alive) == 1 else "nodes")  # fmt: skip
        self._was_up = True

    @defer.inlineCallbacks
    def _read_node(self, other: str) -> Any:
        raw = yield self._commands.hgetall(self._node_key(other))
        state: dict[str, str] = {}
        seq = None
        for key, value in (raw or {}).items():
            key, value = _text(key), _text(value)
            if key == "seq":
                seq = int(value)
            elif key.startswith("m:"):
                state[key[2:]] = value
        self.node.read_done(other, seq, state)

    def _read_state(self, other: str, announced: bool) -> None:
        if not announced:
            self.log.warn("backplane: missed envelopes from node {other}; reading its state",
                          other=other)  # fmt: skip
        self._read_node(other).addErrback(self._lost_command, "reading a node's state")

    def envelope(self, data: bytes) -> None:
        if self._buffer is not None:
            self._buffer.append(data)
        else:
            self.node.received(data)

    def _join_failed(self, failure: Any) -> None:
        # Once every 30 s at most: a Redis that keeps refusing would fill the log.
        now = self.clock.seconds()
        if now - self._reported.get("join", float("-inf")) >= REPORT_EVERY:
            self._reported["join"] = now
            self.log.failure("backplane: joining the network failed; retrying", failure)
        if self._subscriber is not None and self._subscriber.transport is not None:
            self._subscriber.transport.loseConnection()

    def _subscriber_down(self, _: Any) -> None:
        behind = self.backlogs.get(self.node.id, 0)
        if behind >= SLOW_BACKLOG:
            self._split(f"lost the connection to redis, {behind} bytes behind: probably "
                        "dropped for reading too slowly")  # fmt: skip
        else:
            self._split("lost the connection to redis")

    def _lost_command(self, failure: Any, what: str) -> None:
        self.log.warn("backplane: {what} failed: {error}", what=what,
                      error=failure.getErrorMessage())  # fmt: skip
        if self._subscriber is not None and self._subscriber.transport is not None:
            self._subscriber.transport.loseConnection()  # rejoin from scratch

    def _split(self, why: str) -> None:
        self._subscriber = None
        self._buffer = None
        self.node.abandon_reads()
        if not self._up:
            return
        self._up = False
        self.log.warn("backplane: node {node} is split from the network: {why}",
                      node=self.node.id, why=why)  # fmt: skip
        if self.node.service is not None and self.running:
            self.node.service.network_changed(
                False,
                "the network is split: members elsewhere are out of reach for now; "
                "this server keeps working and reconnects by itself",
            )

    # -- the lease and the other nodes' -------------------------------------------------

    def _heartbeat(self) -> None:
        """Renew our lease, take over the members of nodes whose lease ran out, see
        which nodes fall behind."""
        if not self._up:
            self._revive()
            return
        renewing = self._renewing
        # A renewal still unanswered one beat later (lease / 3; the test allows for a
        # beat come early) is judged after this turn's reads, so an answer that waited
        # while the reactor was busy is read first.  A hang is then left within two
        # beats of its start, inside the lease.
        if renewing is not None and self.clock.seconds() - renewing >= self.lease / 4:
            self.clock.callLater(0, self._hung, renewing)
        if not self._watching:
            self._watching = True
            self._renewing = self.clock.seconds()
            d = self._renew_and_watch()
            d.addErrback(self._lost_command, "renewing the lease")
            d.addBoth(self._watched)
        # Back through our own subscription: how late this node reads (``_beat_back``).
        # Others learn from it the last envelope sent, so a lost one shows within a beat.
        self._commands.publish(CHANNEL, self.node.beat()).addErrback(
            self._lost_command, "publishing a heartbeat"
        )
        if self._watch_backlogs:
            self._commands.execute_command("CLIENT", "LIST", "TYPE", "pubsub").addCallbacks(
                self._read_backlogs, self._no_backlogs
            )

    def _revive(self) -> None:
        """txredisapi stops reconnecting for good when Redis refuses a connection's
        first command (AUTH, SELECT), which also happens when Redis has reached its
        client limit as this node reconnects: start connecting again, so the node
        rejoins once Redis takes it (a wrong password is then reported every 30 s)."""
        for factory in (self._command_factory, self._sub_factory):
            if factory is None or not factory.stopped or factory.disconnectCalled:
                continue
            now = self.clock.seconds()
            if now - self._reported.get("refused", float("-inf")) >= REPORT_EVERY:
                self._reported["refused"] = now
                self.log.warn("backplane: redis refused a connection; trying again")
            factory.stopped = False
            factory.slots = [slot for slot in factory.slots if slot.protocol is not None]
            factory.startConnecting(self.address.endpoint(self.reactor))

    def _watched(self, _: Any) -> None:
        self._watching = False
        self._renewing = None

    def _hung(self, since: float) -> None:
        """The lease renewal sent at ``since`` is still unanswered a beat later:
        Redis hangs (or the path to it drops everything).  Drop the connections, so this
        node says it is split and reconnects, before its lease runs out unnoticed."""
        if self._renewing != since or not self._up:
            return
        self.log.warn("backplane: redis has not answered for {seconds} s; reconnecting",
                      seconds=round(self.clock.seconds() - since, 1))  # fmt: skip
        for connection in list(getattr(self._command_factory, "pool", [])):
            if connection.transport is not None:
                connection.transport.abortConnection()
        if self._subscriber is not None and self._subscriber.transport is not None:
            self._subscriber.transport.abortConnection()

    def _beat_back(self, lag: float) -> None:
        self.lag = lag
        if lag >= SLOW_LAG:
            self._report_slow(
                self.node.id, "backplane: node {node} reads the network {lag} s late "
                "(its reactor is busy, or Redis is slow to send)", lag=round(lag, 1),
            )  # fmt: skip

    def _read_backlogs(self, listing: Any) -> None:
        """Every node's subscription as Redis holds it: report those falling behind."""
        backlogs = {}
        for line in _text(listing).splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            name = fields.get("name", "")
            if name.startswith(SUBSCRIBER_NAME) and fields.get("omem", "").isdigit():
                backlogs[name[len(SUBSCRIBER_NAME) :]] = int(fields["omem"])
        self.backlogs = backlogs
        for node_id, size in backlogs.items():
            if size >= SLOW_BACKLOG:
                self._report_slow(
                    node_id, "backplane: node {node} is falling behind: redis holds {size} "
                    "bytes for it, and drops it past its client-output-buffer-limit",
                    size=size,
                )  # fmt: skip

    def _no_backlogs(self, failure: Any) -> None:
        if not failure.check(txredisapi.ResponseError):
            return  # the connection was lost: watched again once it is back
        self._watch_backlogs = False  # refused (a managed Redis): not asked again
        self.log.warn("backplane: cannot watch for slow nodes (CLIENT LIST: {error})",
                      error=failure.getErrorMessage())  # fmt: skip

    def _report_slow(self, node_id: str, fmt: str, **fields: Any) -> None:
        now = self.clock.seconds()
        if now - self._reported.get(node_id, -REPORT_EVERY) >= REPORT_EVERY:
            self._reported[node_id] = now
            self.log.warn(fmt, node=node_id, **fields)

    @defer.inlineCallbacks
    def _renew_and_watch(self) -> Any:
        commands = self._commands
        yield commands.set(PREFIX + "lease:" + self.node.id, "1", pexpire=int(self.lease * 1000))
        self._renewing = None  # Redis answers
        others = yield commands.smembers(PREFIX + "nodes")
        for other in others:
            other = _text(other)
            if other == self.node.id:
                continue
            if (yield commands.exists(PREFIX + "lease:" + other)):
                continue
            self.log.warn("backplane: node {other} stopped renewing its lease; its members "
                          "are gone", other=other)  # fmt: skip
            self.node.forget(other, LOST_WITH_SERVER)
            yield self._forget_node(other)
        if len(self.node.guests) < GUEST_BLOCK // 5:
            yield self._refill_guests()
        service = self.node.service
        if service is None or self.clock.seconds() - self._joined_at < self.lease:
            return
        known = {m.node for m in service.by_id.values() if m.node}
        for other in known - {_text(o) for o in others}:
            # Forgotten by another node first, or not back a lease after Redis returned.
            self.node.forget(other, LOST_WITH_SERVER)

    def _forget_node(self, node_id: str) -> Any:
        """Drop a node's state and names from Redis, unless it renewed its lease."""
        commands = self._commands
        lease = PREFIX + "lease:" + node_id
        own = node_id == self.node.id
        d = commands.eval(
            _RESET, keys=[self._node_key(node_id), PREFIX + "nicks:" + node_id],
            args=[node_id] if own else [node_id, lease],
        )  # fmt: skip

        def gone(answer: Any) -> Any:
            if answer == -1:
                return None
            return commands.srem(PREFIX + "nodes", node_id)

        d.addCallback(gone)
        if own:
            d.addCallback(lambda _: commands.delete(lease))
        return d

    @defer.inlineCallbacks
    def _refill_guests(self, floor: int = 0) -> Any:
        if self._fetching_guests:
            return
        self._fetching_guests = True
        try:
            top = yield self._commands.eval(
                _GUESTS, keys=[PREFIX + "guests"], args=[floor, GUEST_BLOCK]
            )
            self.node.guests.extend(range(int(top) - GUEST_BLOCK + 1, int(top) + 1))
        finally:
            self._fetching_guests = False

    @staticmethod
    def _node_key(node_id: str) -> str:
        return PREFIX + "node:" + node_id


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
