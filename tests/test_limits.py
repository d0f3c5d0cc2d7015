"""Input rate limits: delay first (stop reading), disconnect a persistent flooder."""

from __future__ import annotations

from tests.doubles import ProtocolHarness
from twisted_chat.rules.limits import InputLimits, TokenBucket

LIMITS = InputLimits(
    rate=5.0, burst=10.0, byte_rate=16384.0, byte_burst=65536.0, flood_timeout=20.0
)


def test_token_bucket_rule():
    bucket = TokenBucket(rate=5.0, burst=10.0, now=0.0)
    for _ in range(10):
        assert bucket.wait(0.0) == 0.0
        bucket.take(0.0)
    assert bucket.wait(0.0) == 0.2
    assert bucket.wait(0.2) == 0.0
    assert bucket.wait(100.0) == 0.0 and bucket.tokens == 10.0  # never above the burst


def test_burst_passes_then_lines_are_delayed_in_order_and_reading_pauses():
    h = ProtocolHarness(limits=LIMITS)
    alice = h.connect()
    bob = h.connect()
    bob.new_lines()
    alice.send(b"".join(b"line %d\n" % i for i in range(20)))
    assert len(bob.new_lines()) == 10
    assert alice.transport.producerState == "paused"  # back-pressure on the sender
    h.clock.advance(0.2)
    assert bob.new_lines() == ["[#lobby] <guest1> line 10"]
    h.clock.pump([0.2] * 10)
    assert bob.new_lines() == [f"[#lobby] <guest1> line {i}" for i in range(11, 20)]
    assert alice.transport.producerState == "producing"
    assert h.clock.getDelayedCalls() == []


def test_heartbeats_pass_when_the_line_budget_is_spent():
    h = ProtocolHarness(limits=LIMITS)
    alice = h.connect()
    alice.send(b"".join(b"chat %d\n" % i for i in range(10)))  # the whole line burst
    alice.new_lines()
    alice.send(b"/ping still-here\n")
    assert alice.new_lines() == ["*** pong still-here"]


def test_pings_beyond_a_few_per_second_are_charged_like_lines():
    h = ProtocolHarness(limits=LIMITS)
    alice = h.connect()
    alice.send(b"".join(b"/ping %d\n" % i for i in range(30)))
    pongs = [x for x in alice.new_lines() if x.startswith("*** pong")]
    assert len(pongs) == 15  # 5 free heartbeats, then the 10-line burst
    assert alice.transport.producerState == "paused"
    h.clock.pump([0.2] * 15)  # the rest at the line rate: about 5 a second
    assert len([x for x in alice.new_lines() if x.startswith("*** pong")]) == 15


def test_throttled_sender_is_not_timed_out_and_a_persistent_flooder_is_dropped():
    h = ProtocolHarness(limits=LIMITS, timeout=10.0, sweep=1.0)
    h.service.startService()
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    for _ in range(300):  # 30 s of sending 10 lines every 0.1 s: 20 times the rate
        if alice.protocol.member is None or not alice.protocol.member.present:
            break
        if alice.transport.producerState == "producing":
            alice.send(b"spam\n" * 10)
        bob.send(b"/ping\n")  # bob only listens, but keeps his heartbeat
        h.clock.advance(0.1)
    lines = [x for x in bob.new_lines() if "pong" not in x]
    assert "*** [#lobby] alice lost connection (flooding: held at 5 lines/s for 20 s)" in lines
    assert not any("timed out" in line for line in lines)
    h.service.stopService()


def test_a_paste_well_within_the_flood_timeout_is_delivered_whole():
    h = ProtocolHarness(limits=LIMITS)
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    alice.send(b"".join(b"paste %d\n" % i for i in range(60)))  # 10 at once + 50 in 10 s
    h.clock.pump([0.1] * 120)
    assert bob.new_lines() == [f"[#lobby] <alice> paste {i}" for i in range(60)]
    assert alice.protocol.member is not None and alice.protocol.member.present


def test_every_byte_read_counts_and_reading_waits_for_the_byte_budget():
    limits = InputLimits(rate=1000.0, burst=1000.0, byte_rate=1000.0, byte_burst=4000.0)
    h = ProtocolHarness(limits=limits)
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    alice.send((b"y" * 999 + b"\n") * 8)  # 8000 bytes read: 4000 over the budget
    assert len(bob.new_lines()) == 8  # what was read is acted on ...
    assert alice.transport.producerState == "paused"  # ... but no more is read
    h.clock.advance(3.9)
    assert alice.transport.producerState == "paused"
    h.clock.advance(0.2)
    assert alice.transport.producerState == "producing"
    assert h.clock.getDelayedCalls() == []


def test_bytes_that_never_make_a_line_count_too():
    limits = InputLimits(byte_rate=1000.0, byte_burst=4000.0, flood_timeout=20.0)
    h = ProtocolHarness(limits=limits)
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    alice.send(b"z" * 6000)  # 6000 bytes of one endless line: no line ever comes of it
    assert alice.transport.producerState == "paused"
    h.clock.advance(2.1)
    assert alice.transport.producerState == "producing"
    for _ in range(30):  # keep sending as fast as reading allows: held back throughout
        if alice.transport.producerState == "producing":
            alice.send(b"z" * 6000)
        h.clock.advance(1.0)
    assert "*** [#lobby] alice lost connection (flooding: held at 1000 bytes/s for 20 s)" in (
        bob.new_lines()
    )


def test_welcome_announces_the_limits():
    h = ProtocolHarness(limits=LIMITS)
    alice = h.connect()
    alice.send(b"/format json\n")
    welcome = alice.new_json()[-1]
    assert welcome["limits"] == {
        "rate": 5.0,
        "burst": 10.0,
        "byte_rate": 16384.0,
        "flood_timeout": 20.0,
    }


def test_a_huge_backlog_is_a_flood_at_once_and_the_sender_is_told_to_slow_down():
    h = ProtocolHarness(limits=LIMITS)
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    alice.new_lines()
    alice.send(b"hello\n" * 50)  # 40 waiting: 8 s at 5 lines/s, within 20 s
    assert alice.new_lines()[0].startswith("*** Slow down: you are sending faster than 5 lines/s")
    alice.send(b"hello\n" * 100)  # now 140 waiting: 28 s, more than the flood timeout
    lines = bob.new_lines()
    assert lines[-1].startswith("*** [#lobby] alice lost connection (flooding: ")
    assert "lines at once" in lines[-1]
