"""``--workers N``: option handling, the supervisor on a fake reactor and a ``Clock``, the
worker's log stream, and the sockets a worker adopts (on real loopback sockets)."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.application.service import IServiceCollection
from twisted.internet import defer, error, protocol
from twisted.internet.task import Clock
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import usage
from twisted.python.failure import Failure

from twisted_chat import tap
from twisted_chat.workers import supervisor as sup
from twisted_chat.workers.child import ParentWatch, client_share, stream_observer

BACKPLANE = ("--backplane", "redis://127.0.0.1:6379")


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """History is on by default, in a file of the working directory."""
    monkeypatch.chdir(tmp_path)


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def refusal(*args: str) -> str:
    with pytest.raises(tap.OptionError) as info:
        parse(*args)
    return info.value.message


@pytest.fixture
def events():
    """Every log event published while the test runs."""
    seen: list[dict[str, Any]] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


# -- options ------------------------------------------------------------------------------


def test_one_worker_is_the_default_and_changes_nothing():
    assert parse()["workers"] == 1
    for args in ([], ["--workers", "1"]):
        services = list(IServiceCollection(tap.makeService(parse("--port", "tcp:0", *args))))
        kinds = [type(s).__name__ for s in services]
        assert kinds == ["HistoryService", "ChatService", "ListenerService"], kinds


def test_more_than_one_worker_needs_the_backplane():
    message = refusal("--workers", "2")
    assert message.startswith("--workers 2 needs --backplane: ")
    assert "redis://" in message
    # It is a usage error of postOptions, which parseOptions turns into one line.
    with pytest.raises(usage.UsageError, match="needs --backplane"):
        usage.Options.parseOptions(tap.Options(), ["--workers", "2"])


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--workers", "0"], "--workers must be between 1 and 256 processes"),
        (["--workers", "300"], "--workers must be between 1 and 256 processes"),
        (["--workers", "two"], "--workers must be a number of processes, not 'two'"),
        (
            ["--workers", "3", "--max-clients", "2", *BACKPLANE],
            "--max-clients (2) is shared out among the workers: it must be at least --workers (3)",
        ),
    ],
)
def test_bad_worker_options_are_one_line(args, expected):
    assert refusal(*args) == expected


def test_only_ports_the_parent_binds_itself_can_be_shared(monkeypatch):
    from twisted.internet import endpoints
    from twisted.python.systemd import ListenFDs

    # As if systemd had passed us a socket (the endpoint only parses here).
    monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon", ListenFDs([3]))
    args = ["--port", "systemd:domain=INET:index=0", *BACKPLANE]
    parse(*args)
    assert refusal(*args, "--workers", "2") == (
        "--workers needs a --port the parent can bind and hand to its workers "
        "(tcp:, tcp6:, ssl: or unix:), not systemd:"
    )


def test_workers_make_a_parent_that_holds_the_port_and_supervises(tmp_path):
    args = ["--port", "tcp:0", "--workers", "3", *BACKPLANE, "--port-file", str(tmp_path / "p")]
    options = parse(*args)
    assert options.argv == args and options.cwd == os.getcwd()
    services = list(IServiceCollection(tap.makeService(options)))
    assert [type(s) for s in services] == [tap.HeldListener, sup.Supervisor]
    held, supervisor = cast(tap.HeldListener, services[0]), cast(sup.Supervisor, services[1])
    assert held.port_file == str(tmp_path / "p")  # the parent writes it, once
    assert supervisor.count == 3 and supervisor.argv == args


def test_the_web_door_is_held_and_passed_like_the_port(tmp_path):
    args = ["--port", "tcp:0", "--web", "tcp:0", "--workers", "2", *BACKPLANE,
            "--web-port-file", str(tmp_path / "w")]  # fmt: skip
    services = list(IServiceCollection(tap.makeService(parse(*args))))
    held = [cast(tap.HeldListener, s) for s in services if isinstance(s, tap.HeldListener)]
    assert [h.web for h in held] == [False, True]
    assert held[1].port_file == str(tmp_path / "w") and held[0].port_file is None


@pytest.mark.parametrize("port", ["unix:{tmp}/chat.sock", "tcp6:0", "ssl:0"])
def test_unix_tcp6_and_tls_ports_can_be_shared(port, tmp_path):
    from tests.test_client_e2e import _make_certificate

    if port == "ssl:0":
        key, cert, _ = _make_certificate(tmp_path)
        port = f"ssl:0:privateKey={key}:certKey={cert}"
    parse("--port", port.format(tmp=tmp_path), "--workers", "2", *BACKPLANE)


@pytest.mark.parametrize("total,workers", [(10000, 2), (7, 3), (3, 3), (1001, 4)])
def test_max_clients_is_shared_out_exactly(total, workers):
    shares = [client_share(total, workers, n) for n in range(1, workers + 1)]
    assert sum(shares) == total and max(shares) - min(shares) <= 1 and min(shares) >= 1


# -- the supervisor ---------------------------------------------------------------------


class FakeProcess:
    """A spawned worker as the supervisor sees it: a pid and the signals it was sent."""

    def __init__(self, pid: int, proto: sup.WorkerProcess) -> None:
        self.pid = pid
        self.proto = proto
        self.signals: list[str] = []
        self.exited = False

    def signalProcess(self, name: str) -> None:
        if self.exited:
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    def end(self, status: int | None = 0, signal: int | None = None) -> None:
        self.exited = True
        reason: Exception
        if status == 0 and signal is None:
            reason = error.ProcessDone(0)
        else:
            reason = error.ProcessTerminated(status, signal)
        self.proto.processEnded(Failure(reason))


class FakeReactor:
    def __init__(self, fail: int = 0) -> None:
        self.spawned: list[tuple[FakeProcess, dict[str, Any]]] = []
        self.fail = fail  # how many spawns raise OSError first

    def spawnProcess(self, proto, executable, args, env, path, childFDs):
        if self.fail:
            self.fail -= 1
            raise OSError(11, "Resource temporarily unavailable")
        process = FakeProcess(1000 + len(self.spawned), proto)
        self.spawned.append(
            (process, {"args": args, "env": env, "path": path, "childFDs": childFDs})
        )
        return process

    def running(self, number: int) -> FakeProcess:
        """The newest process of worker ``number``."""
        for process, _ in reversed(self.spawned):
            if process.proto.slot.number == number:
                return process
        raise AssertionError(f"worker {number} never spawned")


def make_supervisor(count: int = 2, fail: int = 0):
    reactor, clock, gave_up = FakeReactor(fail), Clock(), []
    supervisor = sup.Supervisor(
        count, ["--workers", str(count)], "/srv/chat", lambda: {"port": (7, socket.AF_INET)},
        reactor, give_up=lambda: gave_up.append(True), clock=clock,  # type: ignore[arg-type]
    )  # fmt: skip
    return supervisor, reactor, clock, gave_up


def test_workers_start_with_the_socket_and_the_parents_arguments(events):
    supervisor, reactor, _, _ = make_supervisor(2)
    supervisor.startService()
    assert len(reactor.spawned) == 2
    for number, (_, call) in enumerate(reactor.spawned, 1):
        assert call["args"][1:] == ["-P", "-m", "twisted_chat.workers", str(number)]
        # The same code as the parent's, whatever the working folder holds.
        assert call["env"]["PYTHONPATH"].split(os.pathsep)[0] == sup.PACKAGE_ROOT
        assert call["childFDs"] == {0: "w", 1: "r", 2: "r", 3: 7}
        assert call["path"] == "/srv/chat"
        config = json.loads(call["env"][sup.CONFIG_ENV])
        assert config == {"worker": number, "workers": 2, "argv": ["--workers", "2"],
                          "sockets": {"port": [3, socket.AF_INET]}}  # fmt: skip
    started = [(e["worker"], e["pid"]) for e in events if "started (pid" in e["log_format"]]
    assert started == [(1, 1000), (2, 1001)]


def test_a_dead_worker_is_logged_and_restarted_after_a_growing_delay(events):
    supervisor, reactor, clock, gave_up = make_supervisor(2)
    supervisor.startService()
    clock.advance(100)  # a long, healthy run first
    reactor.running(1).end(signal=9)
    death = [e for e in events if e.get("how") == "was killed by SIGKILL"]
    assert len(death) == 1 and death[0]["log_level"] == LogLevel.warn
    assert (death[0]["worker"], death[0]["pid"], death[0]["signal"]) == (1, 1000, 9)
    assert formatEvent(death[0]) == (
        "worker 1 (pid 1000) was killed by SIGKILL after 100.0 s; restarting it in 0.5 s"
    )
    delays = []
    for _ in range(8):  # then it dies at once, again and again: each wait doubles, to 30 s
        waited = 0.0
        count = len(reactor.spawned)
        while len(reactor.spawned) == count:
            clock.advance(0.25)
            waited += 0.25
        delays.append(waited)
        reactor.running(1).end(status=1)
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert not gave_up  # worker 2 is fine: keep trying
    statuses = [e["status"] for e in events if e.get("how") == "exited with status 1"]
    assert statuses == [1] * 8
    # A run of HEALTHY seconds or more: back to the first delay.
    clock.advance(30)
    clock.advance(sup.HEALTHY)
    reactor.running(1).end(status=1)
    assert events[-1]["delay"] == sup.FIRST_DELAY


def test_every_worker_dying_at_start_again_and_again_stops_the_server(events, logged_errors):
    logged_errors.expected = True  # the critical line saying so
    supervisor, reactor, clock, gave_up = make_supervisor(2)
    supervisor.startService()
    for _ in range(sup.GIVE_UP):
        for number in (1, 2):
            if not gave_up:
                reactor.running(number).end(status=1)
        clock.advance(sup.MAX_DELAY)
    assert gave_up == [True]
    assert [e for e in events if e["log_level"] == LogLevel.critical]
    count = len(reactor.spawned)
    clock.advance(60)
    assert len(reactor.spawned) == count  # nothing more is started


def test_a_worker_that_cannot_be_spawned_is_retried(events):
    supervisor, reactor, clock, _ = make_supervisor(1, fail=2)
    supervisor.startService()
    assert reactor.spawned == []
    clock.advance(0.5)
    assert reactor.spawned == []
    clock.advance(1)
    assert len(reactor.spawned) == 1
    assert [formatEvent(e) for e in events if "how" in e] == [
        "worker 1 could not be started ([Errno 11] Resource temporarily unavailable); "
        f"restarting it in {delay:g} s"
        for delay in (0.5, 1)
    ]


def test_stopping_terms_every_worker_and_waits_for_them():
    supervisor, reactor, clock, _ = make_supervisor(2)
    supervisor.startService()
    d = supervisor.stopService()
    assert d is not None
    one, two = reactor.running(1), reactor.running(2)
    assert one.signals == ["TERM"] and two.signals == ["TERM"]
    one.end(status=0)
    assert not d.called
    two.end(status=0)
    assert d.called
    assert len(reactor.spawned) == 2  # nobody restarted
    assert clock.getDelayedCalls() == []


def test_stopping_kills_a_worker_that_does_not_stop(events, logged_errors):
    supervisor, reactor, clock, _ = make_supervisor(2)
    supervisor.startService()
    d = supervisor.stopService()
    assert d is not None
    reactor.running(1).end(status=0)
    clock.advance(sup.STOP_GRACE)
    assert reactor.running(2).signals == ["TERM", "KILL"]
    assert any("did not stop within" in e["log_format"] for e in events)
    assert not d.called
    reactor.running(2).end(signal=9)
    assert d.called and clock.getDelayedCalls() == []

    # One that does not go even then is waited for only KILL_WAIT more.
    logged_errors.expected = True
    supervisor, reactor, clock, _ = make_supervisor(1)
    supervisor.startService()
    d = supervisor.stopService()
    assert d is not None
    clock.advance(sup.STOP_GRACE)
    clock.advance(sup.KILL_WAIT)
    assert d.called


def test_a_restart_pending_at_stop_is_cancelled():
    supervisor, reactor, clock, _ = make_supervisor(1)
    supervisor.startService()
    reactor.running(1).end(signal=11)
    assert supervisor.stopService() is None  # nobody running: nothing to wait for
    clock.advance(60)
    assert len(reactor.spawned) == 1 and clock.getDelayedCalls() == []


# -- the workers' log ---------------------------------------------------------------------


def worker_log_lines(emit) -> bytes:
    """What a worker writes on stdout when ``emit(logger)`` logs."""
    out = io.StringIO()
    logger = Logger(namespace="twisted_chat.rules.connection", observer=LogPublisher(
        stream_observer(out)))  # fmt: skip
    emit(logger)
    return out.getvalue().encode()


def test_worker_events_reach_our_log_saying_which_worker(events, logged_errors):
    logged_errors.expected = True  # the failure below is forwarded as critical

    def emit(log: Logger) -> None:
        log.info("connect {peer} as {nick}", peer="127.0.0.1:5000", nick="bob")
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("sweeping failed")
        log.warn("done")

    data = worker_log_lines(emit)
    supervisor, reactor, _, _ = make_supervisor(2)
    supervisor.startService()
    proto = reactor.running(2).proto
    for i in range(0, len(data), 7):  # in pieces, as a pipe delivers them
        proto.outReceived(data[i : i + 7])
    forwarded = [e for e in events if e.get("worker") == 2 and "log_system" in e]
    assert [formatEvent(e).splitlines()[0] for e in forwarded] == [
        "connect 127.0.0.1:5000 as bob", "sweeping failed", "done"]  # fmt: skip
    assert [e["log_level"] for e in forwarded] == [LogLevel.info, LogLevel.critical,
                                                   LogLevel.warn]  # fmt: skip
    assert forwarded[0]["log_system"] == "worker 2 twisted_chat.rules.connection#info"
    assert forwarded[0]["nick"] == "bob"  # fields stay structured
    assert "ZeroDivisionError: division by zero" in formatEvent(forwarded[1])


def test_other_worker_output_is_logged_as_text():
    event = sup.worker_event(b"not json at all\r", 3, 12.0)
    assert formatEvent(event) == "not json at all" and event["log_time"] == 12.0
    assert event["log_system"] == f"worker 3 {sup.__name__}#info"


def test_worker_stderr_is_a_warning_and_an_unfinished_line_comes_at_exit(events):
    supervisor, reactor, _, _ = make_supervisor(1)
    supervisor.startService()
    process = reactor.running(1)
    process.proto.errReceived(b"Traceback (most recent call last):\n  File")
    process.proto.outReceived(b"half a line")
    process.end(status=1)
    stderr = [e for e in events if e.get("log_system") == "worker 1 stderr"]
    assert [e["line"] for e in stderr] == ["Traceback (most recent call last):", "  File"]
    assert any(formatEvent(e) == "half a line" and e.get("worker") == 1 for e in events)


def test_a_very_long_line_is_cut():
    lines = sup.Lines()
    assert lines.feed(b"x" * (sup.MAX_LOG_LINE + 10)) == [b"x" * sup.MAX_LOG_LINE]
    assert lines.feed(b"\nnext\n") == [b"next"]


def test_the_log_stream_stops_quietly_once_the_parent_is_gone():
    class Broken(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Broken.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

    observe = stream_observer(Broken())
    for _ in range(3):
        observe({"log_format": "x", "log_level": LogLevel.info, "log_namespace": "t"})
    assert Broken.writes == 1


# -- the worker's side --------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_worker_notices_its_parent_is_gone():
    from twisted.internet import reactor

    read, write = os.pipe()
    gone: defer.Deferred[None] = defer.Deferred()
    watch = ParentWatch(read, lambda: gone.callback(None))
    reactor.addReader(watch)
    try:
        os.close(write)
        yield gone.addTimeout(5, reactor)
    finally:
        reactor.removeReader(watch)
        os.close(read)


class Hello(protocol.Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello\n")
        self.transport.loseConnection()


def _greeting(family: int, address: Any) -> bytes:
    with socket.socket(family) as client:
        client.settimeout(5)
        client.connect(address)
        return client.recv(100)


@pytest_twisted.inlineCallbacks
def test_an_adopted_tcp_port_accepts_on_the_parents_socket():
    from twisted.internet import endpoints, reactor

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(5)
    held.setblocking(False)
    endpoint = endpoints.serverFromString(reactor, "tcp:0")
    factory = protocol.Factory.forProtocol(Hello)
    port = yield tap.adopt(reactor, endpoint, (os.dup(held.fileno()), socket.AF_INET), factory)
    try:
        assert isinstance(port, tap.BoundedAcceptPort)
        greeting = yield _in_thread(_greeting, socket.AF_INET, held.getsockname())
        assert greeting == b"hello\n"
    finally:
        yield port.stopListening()
    # The parent's socket still listens: a worker's stop is not everyone's.
    with socket.create_connection(held.getsockname(), timeout=5):
        pass
    held.close()


@pytest_twisted.inlineCallbacks
def test_an_adopted_unix_port_leaves_the_socket_to_the_others(tmp_path: Path):
    from twisted.internet import endpoints, reactor

    path = str(tmp_path / "chat.sock")
    held = socket.socket(socket.AF_UNIX)
    held.bind(path)
    held.listen(5)
    held.setblocking(False)
    endpoint = endpoints.serverFromString(reactor, f"unix:{path}")
    factory = protocol.Factory.forProtocol(Hello)
    port = yield tap.adopt(reactor, endpoint, (os.dup(held.fileno()), socket.AF_UNIX), factory)
    try:
        assert isinstance(port, tap.SharedUNIXPort)
        greeting = yield _in_thread(_greeting, socket.AF_UNIX, path)
        assert greeting == b"hello\n"
    finally:
        yield port.stopListening()
    assert os.path.exists(path)  # Twisted's own would unlink it ...
    with socket.socket(socket.AF_UNIX) as client:  # ... and stop it listening
        client.settimeout(5)
        client.connect(path)
    held.close()


def _in_thread(f, *args):
    from twisted.internet import reactor, threads

    return threads.deferToThread(f, *args).addTimeout(5, reactor)


def test_a_full_worker_steps_aside_until_one_of_its_clients_leaves():
    """Its listening socket is shared: while its share is full it stops accepting (a
    refusal is quick, so it would win every accept), and takes newcomers again as soon
    as a client leaves, or after FULL_PAUSE in any case."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone

    from tests.doubles import ProtocolHarness
    from twisted_chat.rules.admission import FULL_PAUSE

    class Port:
        reading = True

        def stopReading(self) -> None:
            self.reading = False

        def startReading(self) -> None:
            self.reading = True

    h = ProtocolHarness()
    admission = h.rules.admission
    admission.max_clients = 2
    admission.shared_port = True
    port = Port()
    admission.listening(port)
    here = IPv4Address("TCP", "10.0.0.7", 1)
    first = h.factory.buildProtocol(here)
    assert port.reading
    h.factory.buildProtocol(here)  # its share is full now
    assert not port.reading
    first.connectionLost(Failure(ConnectionDone()))  # a client leaves: room again
    assert port.reading and h.clock.getDelayedCalls() == []
    h.factory.buildProtocol(here)
    assert not port.reading
    h.clock.advance(FULL_PAUSE)  # still full: it looks again a second later...
    assert port.reading
    h.factory.buildProtocol(here)  # ...and steps aside again at once after a refusal
    assert not port.reading
