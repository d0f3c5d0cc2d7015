"""``--metrics``: known events make known counts (StringTransport, task.Clock).

Every count is read the way Prometheus reads it: the registry rendered to text and
parsed back.  Over real sockets and HTTP: ``tests/test_metrics_e2e.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import error, task
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from tests.doubles import Connection, ProtocolHarness
from twisted_chat.backplane.replica import Node
from twisted_chat.metrics import Health, Histogram, Metrics, ReactorLag
from twisted_chat.rules.limits import InputLimits


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the page, by (name, labels)."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return scrape(metrics)[name, tuple(sorted(labels.items()))]


def room(n: int, **harness: Any) -> tuple[ProtocolHarness, Metrics, list[Connection]]:
    """A server with metrics and ``n`` members in #lobby, each having read its output."""
    h = ProtocolHarness(**harness)
    metrics = Metrics(h.service, h.rules, h.clock, every=0)  # every call timed
    people = [h.connect(f"p{i}") for i in range(n)]
    for person in people:
        person.new_lines()
    return h, metrics, people


def test_messages_to_a_room_are_delivered_to_every_other_member():
    h, metrics, people = room(4)
    messages = value(metrics, "groupchat_messages_received_total", kind="room")
    deliveries = value(metrics, "groupchat_deliveries_total")
    fanouts = value(metrics, "groupchat_fanout_seconds_count")
    for i in range(5):  # one read each: five fan-outs
        people[0].send(f"line {i}\r\n".encode())
    assert value(metrics, "groupchat_messages_received_total", kind="room") == messages + 5
    assert value(metrics, "groupchat_deliveries_total") == deliveries + 5 * 3
    assert value(metrics, "groupchat_fanout_seconds_count") == fanouts + 5
    people[1].send(b"".join(b"/me waves %d\r\n" % i for i in range(7)))  # one read: one batch
    assert value(metrics, "groupchat_messages_received_total", kind="room") == messages + 12
    assert value(metrics, "groupchat_deliveries_total") == deliveries + 12 * 3
    assert value(metrics, "groupchat_fanout_seconds_count") == fanouts + 6
    people[2].send(b"after the batch\r\n")  # settles it, and is counted itself
    assert value(metrics, "groupchat_deliveries_total") == deliveries + 13 * 3
    # What the members were actually shown: each line said, once per other member.
    shown = [
        sum("line " in t or "waves " in t or "after the" in t for t in p.new_lines())
        for p in people
    ]
    assert shown == [7 + 1, 5 + 1, 5 + 7, 5 + 7 + 1]
    assert sum(shown) == 13 * 3


def test_a_private_message_reaches_its_recipient_and_the_senders_copy():
    h, metrics, people = room(3)
    deliveries = value(metrics, "groupchat_deliveries_total")
    people[0].send(b"/msg p1 psst\r\n")
    assert value(metrics, "groupchat_messages_received_total", kind="private") == 1
    assert value(metrics, "groupchat_messages_received_total", kind="room") == 0
    assert value(metrics, "groupchat_deliveries_total") == deliveries + 2


def test_connections_members_rooms_and_bytes():
    h, metrics, people = room(3)
    assert value(metrics, "groupchat_connections", door="line") == 3
    assert value(metrics, "groupchat_connections_accepted_total", door="line") == 3
    assert value(metrics, "groupchat_connections", door="web") == 0
    assert value(metrics, "groupchat_members") == 3
    people[0].send(b"/join #elsewhere\r\n")
    assert value(metrics, "groupchat_rooms") == 2
    people[0].send(b"hello\r\n")
    sent = b"/nick p0\r\n/nick p1\r\n/nick p2\r\n/join #elsewhere\r\nhello\r\n"
    assert value(metrics, "groupchat_received_bytes_total") == len(sent)
    written = sum(len(p.output()) for p in people)
    assert value(metrics, "groupchat_sent_bytes_total") == written
    people[2].transport.loseConnection()
    people[2].protocol.connectionLost(Failure(error.ConnectionDone()))
    assert value(metrics, "groupchat_connections", door="line") == 2
    assert value(metrics, "groupchat_connections_accepted_total", door="line") == 3
    assert value(metrics, "groupchat_members") == 2
    assert value(metrics, "groupchat_disconnects_total", reason="lost") == 1


def test_quit_is_counted_once_and_not_as_lost():
    h, metrics, people = room(2)
    people[0].send(b"/quit bye\r\n")
    people[0].protocol.connectionLost(Failure(error.ConnectionDone()))
    assert value(metrics, "groupchat_disconnects_total", reason="quit") == 1
    assert value(metrics, "groupchat_disconnects_total", reason="lost") == 0


def test_a_heartbeat_timeout_is_counted():
    h, metrics, people = room(2, interval=1.0, timeout=3.0, sweep=1.0, warning=1.0)
    h.service.startService()
    for _ in range(6):
        people[1].send(b"/ping\r\n")  # the other keeps talking
        h.clock.advance(1.0)
    assert value(metrics, "groupchat_disconnects_total", reason="timeout") == 1
    assert value(metrics, "groupchat_members") == 1
    h.service.stopService()


def test_a_flood_is_counted():
    limits = InputLimits(rate=1.0, burst=1.0, byte_rate=1e6, byte_burst=1e6, flood_timeout=2.0)
    h, metrics, people = room(2, limits=limits)
    people[0].send(b"x\r\n" * 10)  # nine waiting at one a second: over the 2 s allowed
    assert people[0].transport.disconnecting
    assert value(metrics, "groupchat_disconnects_total", reason="flood") == 1
    assert value(metrics, "groupchat_disconnects_total", reason="not_reading") == 0


def test_a_member_that_does_not_read_is_counted():
    h, metrics, people = room(2)
    h.rules.send_queue = 4096
    people[1].protocol.gate.pauseProducing()  # its transport is full
    for i in range(100):
        people[0].send(b"%d %s\r\n" % (i, b"y" * 200))
        if people[1].transport.disconnecting:
            break
    assert people[1].transport.disconnecting
    assert value(metrics, "groupchat_disconnects_total", reason="not_reading") == 1
    queued = value(metrics, "groupchat_send_queue_bytes")
    assert queued == 0  # dropped with its queue


def test_the_send_queue_gauge_sums_what_waits():
    h, metrics, people = room(3)
    people[1].protocol.gate.pauseProducing()
    people[2].protocol.gate.pauseProducing()
    people[0].send(b"waiting\r\n")
    waiting = people[1].protocol.queued + people[2].protocol.queued
    assert waiting > 0
    assert value(metrics, "groupchat_send_queue_bytes") == waiting


def test_refusals_by_a_limit_are_counted():
    h, metrics, people = room(1)
    h.rules.admission.max_per_address = 1
    assert h.factory.buildProtocol(people[0].transport.getPeer()) is not None  # held, told
    assert value(metrics, "groupchat_disconnects_total", reason="refused") == 1
    assert value(metrics, "groupchat_connections_accepted_total", door="line") == 1


def test_failed_logins_are_counted():
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

    from twisted_chat.rules.login import Authenticator

    h = ProtocolHarness()
    metrics = Metrics(h.service, h.rules, h.clock)
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    h.rules.authenticator = Authenticator([checker], h.clock, attempts=2, failure_floor=0)
    conn = h.connect()
    for _ in range(2):
        conn.send(b"/login alice wrong\r\n")
        h.clock.advance(5.0)
    assert conn.transport.disconnecting
    assert value(metrics, "groupchat_login_failures_total") == 2
    assert value(metrics, "groupchat_disconnects_total", reason="login") == 1


def test_kicked_and_banned_can_be_counted_by_the_core():
    h, metrics, people = room(1)
    for reason in ("quit", "killed", "kicked", "banned", "lost"):  # every reason, from 0
        assert value(metrics, "groupchat_disconnects_total", reason=reason) == 0
    h.service.tally.disconnect("kicked")
    h.service.tally.disconnect("banned")
    h.service.tally.disconnect("killed")
    h.service.tally.disconnect("strange")  # a reason not known yet has its own label
    assert value(metrics, "groupchat_disconnects_total", reason="kicked") == 1
    assert value(metrics, "groupchat_disconnects_total", reason="banned") == 1
    assert value(metrics, "groupchat_disconnects_total", reason="killed") == 1
    assert value(metrics, "groupchat_disconnects_total", reason="strange") == 1


def test_commands_are_timed():
    h, metrics, people = room(1)
    count = value(metrics, "groupchat_command_seconds_count")
    people[0].send(b"/who\r\n/rooms\r\nhi\r\n")
    assert value(metrics, "groupchat_command_seconds_count") == count + 3


def test_histogram_buckets_are_cumulative_and_inclusive():
    histogram = Histogram([0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(v)
    samples = {(s.name, s.labels.get("le")): s.value for s in histogram.family("h", "help").samples}
    assert samples["h_bucket", "0.1"] == 2  # a value on a bound is in its bucket
    assert samples["h_bucket", "1.0"] == 4
    assert samples["h_bucket", "+Inf"] == 5
    assert samples["h_count", None] == 5
    assert samples["h_sum", None] == pytest.approx(8.65)


def test_reactor_lag_is_how_late_the_loop_runs_and_it_survives_an_error(logged_errors):
    clock = task.Clock()
    lag = ReactorLag(clock, interval=0.5)
    lag.start()
    clock.advance(0.5)
    assert lag.last == 0.0
    clock.advance(0.7)  # due at 1.0, run at 1.2
    assert lag.last == pytest.approx(0.2)
    clock.advance(0.3)  # next due at 1.5, as LoopingCall schedules it: on time
    assert lag.last == 0.0
    broken = lag.time

    class Broken(Histogram):
        def observe(self, value: float) -> None:
            raise RuntimeError("boom")

    lag.time = Broken([1.0])
    logged_errors.expected = True
    clock.advance(0.5)
    assert lag.loop.running
    lag.time = broken
    clock.advance(0.6)  # due at 2.5, run at 2.6
    assert lag.last == pytest.approx(0.1)
    assert broken.count == 4
    lag.stop()
    assert not clock.getDelayedCalls()


def test_the_service_runs_the_lag_loop_while_it_runs():
    h, metrics, people = room(1)
    metrics.startService()
    h.clock.pump([0.5] * 4)
    assert value(metrics, "groupchat_reactor_lag_seconds_count") == 4
    metrics.stopService()
    assert not metrics.lag.loop.running


def test_health_says_ok_while_the_chat_runs():
    h, metrics, people = room(1)
    health = Health(h.service)
    request = DummyRequest([b""])
    assert health.render_GET(request) == b"stopping\n"  # type: ignore[arg-type]
    assert request.responseCode == 503
    h.service.startService()
    request = DummyRequest([b""])
    assert health.render_GET(request) == b"ok\n"  # type: ignore[arg-type]
    assert request.responseCode in (None, 200)
    h.service.stopService()


def test_backplane_traffic_is_counted_on_the_node():
    class Link:
        def connected(self) -> bool:
            return True

    clock = task.Clock()
    one, two = Node("n1", clock, Link()), Node("n2", clock, Link())  # type: ignore[arg-type]
    beat = one.beat()
    assert (one.envelopes_out, one.bytes_out) == (1, len(beat))
    one.received(beat)  # its own echo: not traffic in
    assert one.envelopes_in == 0
    two.received(beat)
    assert (two.envelopes_in, two.bytes_in) == (1, len(beat))


def test_metrics_options():
    from twisted_chat.tap import OptionError, Options

    options = Options()
    options.parseOptions(["--metrics", "tcp:0:interface=127.0.0.1", "--history", "none"])
    assert options["metrics-endpoint"][1] == "tcp:0:interface=127.0.0.1"
    assert Options()["metrics"] is None
    with pytest.raises(OptionError, match="--metrics 'nonsense:1' is not usable"):
        Options().parseOptions(["--metrics", "nonsense:1"])
    with pytest.raises(OptionError, match="--metrics does not work with --workers"):
        Options().parseOptions(
            ["--metrics", "9100", "--workers", "2", "--backplane", "redis://127.0.0.1:6379"]
        )


def test_timing_is_sampled_counting_is_not():
    h = ProtocolHarness()
    metrics = Metrics(h.service, h.rules, h.clock, every=1.0)
    people = [h.connect(f"p{i}") for i in range(3)]
    h.clock.advance(1.0)  # whatever the connects timed is a second ago
    commands = value(metrics, "groupchat_command_seconds_count")
    fanouts = value(metrics, "groupchat_fanout_seconds_count")
    deliveries = value(metrics, "groupchat_deliveries_total")
    for i in range(8):
        people[0].send(b"line %d\r\n" % i)
    # The first of the eight was timed, the others within the second were not.
    assert value(metrics, "groupchat_command_seconds_count") == commands + 1
    assert value(metrics, "groupchat_fanout_seconds_count") == fanouts + 1
    h.clock.advance(1.0)  # armed again
    for i in range(8):
        people[1].send(b"more %d\r\n" % i)
    assert value(metrics, "groupchat_command_seconds_count") == commands + 2
    assert value(metrics, "groupchat_fanout_seconds_count") == fanouts + 2
    assert value(metrics, "groupchat_deliveries_total") == deliveries + 16 * 2
    metrics.startService()
    metrics.stopService()  # nothing left scheduled, nothing timed any more
    assert not h.clock.getDelayedCalls()
    people[2].send(b"after\r\n")
    assert value(metrics, "groupchat_command_seconds_count") == commands + 2
    assert value(metrics, "groupchat_deliveries_total") == deliveries + 17 * 2


def test_the_metrics_port_takes_a_few_scrapers_at_once_and_closes_the_rest():
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    from twisted_chat.metrics import SCRAPERS_MAX, CappedSite, MetricsSite

    site = CappedSite(MetricsSite(Resource(), timeout=30))
    addr = IPv4Address("TCP", "127.0.0.1", 5000)
    held = []
    for _ in range(SCRAPERS_MAX):
        protocol = site.buildProtocol(addr)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        held.append(protocol)
    assert site.buildProtocol(addr) is None
    held[0].connectionLost(None)
    assert site.buildProtocol(addr) is not None
