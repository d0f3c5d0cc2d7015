"""The Redis link's own decisions, without a Redis: what it reads from Redis's answers,
when it reports a slow node, and how ``--backplane`` addresses are read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.logger import capturedLogs

from twisted_chat.backplane.redis import (
    REPORT_EVERY,
    SLOW_BACKLOG,
    SUBSCRIBER_NAME,
    RedisAddress,
    RedisLink,
)


def link() -> tuple[RedisLink, task.Clock]:
    clock = task.Clock()
    return RedisLink(RedisAddress.parse("redis://127.0.0.1:1"), clock, reactor=None), clock


def listing(**omem: int) -> bytes:
    """CLIENT LIST TYPE pubsub as Redis 7 answers it, one subscription per node."""
    lines = [
        f"id={i} addr=127.0.0.1:{40000 + i} laddr=127.0.0.1:6379 fd=9 name={SUBSCRIBER_NAME}{node} "
        f"age=3 idle=0 flags=P db=0 sub=1 psub=0 qbuf=0 obl=0 oll={size // 1000} omem={size} "
        "cmd=subscribe user=default"
        for i, (node, size) in enumerate(omem.items())
    ]
    lines.append("id=99 addr=127.0.0.1:1 name= omem=999999999 cmd=subscribe")  # not a node
    return ("\n".join(lines) + "\n").encode()


def warnings(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if "falling behind" in str(e.get("log_format"))]


def test_a_node_whose_subscription_backs_up_in_redis_is_reported_once_per_period():
    redis, clock = link()
    with capturedLogs() as events:
        redis._read_backlogs(listing(fast=0, slow=SLOW_BACKLOG + 1))
        redis._read_backlogs(listing(fast=0, slow=SLOW_BACKLOG * 3))
    assert redis.backlogs == {"fast": 0, "slow": SLOW_BACKLOG * 3}
    (told,) = warnings(events)
    assert (told["node"], told["size"]) == ("slow", SLOW_BACKLOG + 1)
    clock.advance(REPORT_EVERY)
    with capturedLogs() as events:
        redis._read_backlogs(listing(slow=SLOW_BACKLOG * 3))
    assert len(warnings(events)) == 1  # still behind, a period later: told again


def test_a_node_reading_its_own_heartbeat_late_reports_itself():
    redis, _ = link()
    with capturedLogs() as events:
        redis.node.on_beat(0.2)
        redis.node.on_beat(2.5)
    assert redis.lag == 2.5
    told = [e for e in events if "late" in str(e.get("log_format"))]
    assert [e["lag"] for e in told] == [2.5]


def test_backplane_addresses():
    assert RedisAddress.parse("redis://127.0.0.1:6390/2") == RedisAddress(
        "127.0.0.1", 6390, None, 2, False
    )
    assert RedisAddress.parse("rediss://:p%40ss@redis.example:6380").password == "p@ss"
    assert RedisAddress.parse("redis://secret@h").password == "secret"
    assert RedisAddress.parse("redis://h").port == 6379
    for bad in ("http://h:1", "redis://h:port", "redis://h:1/db"):
        with pytest.raises(ValueError):
            RedisAddress.parse(bad)


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class FakeConnection:
    def __init__(self) -> None:
        self.transport = FakeTransport()


class Unanswered:
    """Redis that hangs: every command waits; ``answer_renewals`` answers the SETs."""

    def __init__(self) -> None:
        self.renewals: list[defer.Deferred[Any]] = []

    def set(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.renewals.append(d)
        return d

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: defer.Deferred()

    def answer_renewals(self) -> None:
        for d in self.renewals:
            if not d.called:
                d.callback("OK")


def hanging_link() -> tuple[RedisLink, task.Clock, Unanswered, list[FakeConnection]]:
    redis, clock = link()
    commands = Unanswered()
    connections = [FakeConnection(), FakeConnection()]
    redis._commands = commands
    redis._command_factory = type("Factory", (), {"pool": connections[:1]})()
    redis._subscriber = connections[1]
    redis._up = True
    return redis, clock, commands, connections


def test_a_redis_that_stops_answering_is_left_within_the_lease():
    redis, clock, _, connections = hanging_link()
    step = redis.lease / 3
    redis._heartbeat()  # the renewal is sent
    clock.advance(0)
    assert not any(c.transport.aborted for c in connections)
    clock.advance(step)
    redis._heartbeat()  # one beat later it is still unanswered
    clock.advance(0)
    assert all(c.transport.aborted for c in connections)
    # Had Redis hung just after a renewal was answered, the next renewal goes out a beat
    # later and is judged a beat after that: two beats, inside the lease.
    assert 2 * step < redis.lease


def test_an_answer_that_waited_while_the_reactor_was_busy_is_not_a_hang():
    redis, clock, commands, connections = hanging_link()
    redis._heartbeat()  # the renewal is sent; then the reactor is stuck for 3 s
    clock.advance(3.0)
    redis._heartbeat()  # a late beat sees it unanswered, and judges after the reads...
    commands.answer_renewals()  # ...which bring the answer that had arrived meanwhile
    clock.advance(0)
    assert not any(c.transport.aborted for c in connections)


def test_a_connection_redis_refused_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """txredisapi gives up when a connection's first command is refused (Redis at its
    client limit as the node reconnects); the link starts connecting again."""
    r, clock = link()

    class Factory:
        def __init__(self) -> None:
            self.stopped = True
            self.disconnectCalled = False
            self.slots: list[Any] = []
            self.started: list[Any] = []

        def startConnecting(self, endpoint: Any) -> None:
            self.started.append(endpoint)

    refused, fine = Factory(), Factory()
    fine.stopped = False
    r._command_factory, r._sub_factory = refused, fine
    monkeypatch.setattr(RedisAddress, "endpoint", lambda self, reactor: "endpoint")
    with capturedLogs() as events:
        r._heartbeat()  # not joined: only looks at the connections
        r._heartbeat()
    assert refused.started == ["endpoint"] and not refused.stopped
    assert fine.started == []
    assert sum("refused a connection" in str(e.get("log_format")) for e in events) == 1
