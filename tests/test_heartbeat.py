"""The heartbeat rule, driven by a fake clock: no real time passes in these tests."""

from __future__ import annotations

from tests.doubles import Harness
from twisted_chat.core.service import HeartbeatPolicy
from twisted_chat.render import JSON, TEXT


def started(**policy):
    h = Harness(**policy)
    h.service.startService()
    return h


def test_present_just_before_timeout_and_removed_by_timeout_plus_sweep():
    h = started(timeout=30.0, sweep=1.0)
    alice, pa = h.add("alice")
    bob, pb = h.add("bob")
    h.clock.pump([1.0] * 29)
    h.service.touch(bob)  # bob keeps talking; alice stays silent
    h.clock.pump([1.0] * 1)
    assert alice.present  # silent exactly 30 s: not yet "longer than" the timeout
    h.clock.pump([1.0])
    assert not alice.present  # removed no later than timeout + one sweep period
    timeouts = pb.of_type("timeout")
    assert len(timeouts) == 1
    assert TEXT.text(timeouts[0]).startswith(
        "*** [#lobby] alice timed out (no heartbeat for 31.0 s"
    )
    assert [e.type for e in pa.closed if e] == ["bye"]
    assert "heartbeat" in TEXT.text(pa.closed[0])
    h.service.stopService()


def test_removal_never_later_than_timeout_plus_period_for_any_phase():
    for offset in (0.0, 0.25, 0.5, 0.99):
        h = started(timeout=5.0, sweep=1.0)
        h.clock.advance(offset)
        alice, _ = h.add("alice")
        while alice.present:
            h.clock.advance(0.05)
        idle = h.clock.seconds() - alice.last_seen
        assert 5.0 < idle <= 6.0 + 1e-9
        h.service.stopService()


def test_heartbeats_keep_a_member_indefinitely():
    h = started(interval=10.0, timeout=30.0)
    alice, pa = h.add("alice")
    bob, pb = h.add("bob")
    for _ in range(360):  # an hour, a heartbeat every 10 s, stepped a second at a time
        h.clock.pump([1.0] * 10)
        h.service.ping(alice, "")
        h.service.touch(alice)
        h.service.touch(bob)
    assert alice.present and bob.present
    assert pa.of_type("idle") == [] and pb.of_type("timeout") == []
    h.service.stopService()


def test_room_told_exactly_once_even_after_connection_lost():
    h = started(timeout=3.0)
    alice, _ = h.add("alice")
    bob, pb = h.add("bob")
    h.service.join(alice, "#ops")
    h.service.join(bob, "#ops")
    pb.clear()
    for _ in range(10):
        h.service.touch(bob)
        h.clock.advance(1.0)
    h.service.connection_lost(alice, "connection aborted")  # the adapter's close follows
    (timeout,) = pb.of_type("timeout")  # once, naming both shared rooms
    assert JSON.document(timeout)["rooms"] == ["#lobby", "#ops"]
    assert pb.of_type("disconnect") == []
    h.service.stopService()


def test_silent_member_is_warned_once_and_privately():
    h = started(timeout=30.0, warning=5.0)
    alice, pa = h.add("alice")
    bob, pb = h.add("bob")
    for _ in range(26):
        h.service.touch(bob)
        h.clock.advance(1.0)
    warnings = pa.of_type("idle")
    assert len(warnings) == 1
    assert "send any line" in TEXT.text(warnings[0])
    assert pb.of_type("idle") == []
    h.clock.pump([1.0] * 3)
    assert len(pa.of_type("idle")) == 1  # not repeated every sweep
    h.service.touch(alice)  # any line resets the warning too
    h.clock.pump([1.0] * 26)
    assert len(pa.of_type("idle")) == 2
    h.service.stopService()


def test_warning_window_is_clamped_for_short_timeouts():
    assert HeartbeatPolicy(timeout=4.0, warning=5.0).warn_after == 2.0
    assert HeartbeatPolicy(timeout=30.0, warning=5.0).warn_after == 25.0


def test_sweep_survives_a_failing_member(logged_errors):
    logged_errors.expected = True
    h = started(timeout=2.0)
    alice, pa = h.add("alice")
    bob, pb = h.add("bob")
    carol, pc = h.add("carol")

    def explode(final):
        raise RuntimeError("close failed")

    pa.close = explode
    h.clock.pump([1.0] * 4)
    assert not alice.present and not bob.present and not carol.present
    assert h.service._sweeper.running
    assert [e["log_format"] for e in logged_errors.events] == ["closing {nick} failed"]
    h.service.stopService()


def test_sweep_cost_is_bounded_by_stale_members():
    """Touching moves a member to the back: a sweep looks at the stale ones only."""
    h = started(timeout=30.0)
    members = [h.add(f"user{i}")[0] for i in range(50)]
    h.clock.advance(20.0)
    for m in members[1:]:
        h.service.touch(m)
    assert next(iter(h.service._activity)) is members[0]


def test_stop_service_notifies_everyone_and_stops_the_sweep():
    h = started()
    alice, pa = h.add("alice")
    d = h.service.stopService()
    assert [e.type for e in pa.closed if e] == ["shutdown"]
    assert not h.service._sweeper.running
    h.service.connection_lost(alice, "connection closed")
    assert d.called
    assert h.clock.getDelayedCalls() == []


def test_stop_service_gives_up_waiting_after_grace():
    h = started()
    h.add("alice")
    d = h.service.stopService()
    assert not d.called
    h.clock.advance(h.service.shutdown_grace)
    assert d.called


def test_a_stalled_server_reads_waiting_heartbeats_before_sweeping():
    h = started(timeout=30.0, sweep=1.0)
    alice, _ = h.add("alice")
    h.clock.advance(1.0)
    h.clock.advance(60.0)  # the whole process was stopped for a minute
    assert alice.present  # the first sweep after the stall is skipped
    h.service.touch(alice)  # the heartbeat that waited in the socket is read
    h.clock.advance(1.0)
    assert alice.present
    h.service.stopService()


# -- nudges: letting an adapter ask the peer itself -----------------------------------


def test_a_silent_member_is_nudged_once_per_silence_after_one_interval():
    h = started(interval=10.0, timeout=30.0, sweep=1.0)
    alice, pa = h.add("alice")
    h.clock.pump([1.0] * 10)
    assert pa.nudges == 0  # silent exactly one interval
    h.clock.pump([1.0] * 5)
    assert pa.nudges == 1  # not again every sweep
    h.service.touch(alice)
    h.clock.pump([1.0] * 11)
    assert pa.nudges == 2
    h.service.stopService()


def _telnet_harness():
    from tests.doubles import ProtocolHarness

    h = ProtocolHarness(interval=10.0, timeout=30.0, sweep=1.0, warning=5.0)
    h.service.startService()
    return h


DO_TM, WILL_TM = b"\xff\xfd\x06", b"\xff\xfb\x06"


def test_a_telnet_reader_answering_timing_marks_stays_without_typing():
    h = _telnet_harness()
    reader = h.connect()
    reader.send(b"\xff\xfb\x18")  # a telnet client's own negotiation: WILL TERMINAL-TYPE
    reader.new_lines()
    for _ in range(120):  # two minutes of reading, answering every timing mark
        before = len(reader.output())
        h.clock.advance(1.0)
        if DO_TM in reader.output()[before:]:
            reader.send(WILL_TM)
    assert reader.protocol.member is not None and reader.protocol.member.present
    assert not any("silent" in line for line in reader.new_lines())
    h.service.stopService()


def test_an_nc_user_gets_no_telnet_bytes_and_the_usual_warning():
    h = _telnet_harness()
    nc = h.connect()
    nc.send(b"hello\n")  # bare LF: not telnet
    nc.new_lines()
    h.clock.pump([1.0] * 32)
    assert b"\xff" not in nc.output()
    lines = nc.new_lines()
    assert any(line.startswith("*** You have been silent") for line in lines)
    assert lines[-1].startswith("*** Disconnected: no heartbeat")


def test_json_clients_are_never_sent_telnet_bytes():
    h = _telnet_harness()
    program = h.connect()
    program.send(b"/format json\r\n")
    h.clock.pump([1.0] * 32)
    assert b"\xff" not in program.output()
