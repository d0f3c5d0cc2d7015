"""The Redis link's own decisions, without a Redis: what it reads from Redis's answers,
when it reports a slow node, and how ``--backplane`` addresses are read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet import task
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
