"""The parent's side of ``--workers N``: start, restart and stop the worker processes.

It knows nothing of the chat: a worker is a command, the listening sockets it inherits
and a stream of log events.  Each worker gets the parent's own arguments (parsed again
there, so it builds exactly the node one process would) and its listening sockets as
inherited file descriptors; its stdin is a pipe the parent never writes to, so the
worker sees end-of-file when the parent dies, however it died.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.logger import Logger, LogLevel, eventFromJSON

# The worker's configuration, as JSON: its number, how many there are, the parent's
# arguments and folder, and its sockets (option -> [fd in the worker, address family]).
CONFIG_ENV = "GROUPCHAT_WORKER"
WORKER_MODULE = "twisted_chat.workers"
# The folder holding the twisted_chat package this process imported.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIRST_DELAY = 0.5  # a dead worker is restarted after this, doubled for each quick death
MAX_DELAY = 30.0  # ... up to this: a worker that cannot start costs a fork per 30 s
HEALTHY = 30.0  # a worker that lived this long died of something new: back to FIRST_DELAY
GIVE_UP = 5  # every worker died this many times in a row within HEALTHY: stop the server
STOP_GRACE = 10.0  # a stopping worker tells its members and leaves the network in this
KILL_WAIT = 5.0  # after SIGKILL, how long the parent still waits for a worker to go
MAX_LOG_LINE = 1 << 20  # a worker's log line longer than this is cut

_LEVELS = set(LogLevel.iterconstants())


@dataclass(eq=False)
class Slot:
    """One of the N workers: its current process, if any, and its recent deaths."""

    number: int
    process: IProcessTransport | None = None
    pid: int | None = None
    started: float = 0.0
    failures: int = 0  # deaths in a row, each within HEALTHY of its start
    restart: IDelayedCall | None = None


class Supervisor(service.Service):
    """Keeps ``count`` workers running on the sockets ``sockets()`` returns (by option
    name, ``(fd, family)``), from when it starts until it stops."""

    log = Logger()
    name = "groupchat-workers"

    def __init__(
        self,
        count: int,
        argv: list[str],
        cwd: str,
        sockets: Callable[[], dict[str, tuple[int, int]]],
        reactor: IReactorProcess,
        give_up: Callable[[], None],
        clock: IReactorTime | None = None,
    ) -> None:
        self.count = count
        self.argv = argv
        self.cwd = cwd
        self.sockets = sockets
        self.reactor = reactor
        self.give_up = give_up
        self.clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self.slots = [Slot(number) for number in range(1, count + 1)]
        self._all_ended: defer.Deferred[None] | None = None
        self._stop_call: IDelayedCall | None = None

    # -- starting ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: Slot) -> None:
        slot.restart = None
        if not self.running:
            return
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        passed: dict[str, list[int]] = {}
        for child_fd, (option, (fd, family)) in enumerate(sorted(self.sockets().items()), 3):
            child_fds[child_fd] = fd
            passed[option] = [child_fd, family]
        config = {"worker": slot.number, "workers": self.count, "argv": self.argv,
                  "sockets": passed}  # fmt: skip
        env = {**os.environ, CONFIG_ENV: json.dumps(config)}
        # The worker runs the code this process runs: its package first on the path, and
        # -P keeps the working folder (which may hold another copy) off the front.
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])
        )
        # The number in the command line is for ps only; the worker reads CONFIG_ENV.
        argv = [sys.executable, "-P", "-m", WORKER_MODULE, str(slot.number)]
        try:
            process = self.reactor.spawnProcess(
                WorkerProcess(self, slot), sys.executable, argv, env=env,
                path=self.cwd or None, childFDs=child_fds,
            )  # fmt: skip
        except OSError as e:
            self._died(slot, f"could not be started ({e})", None, None, None)
            return
        slot.process = process
        slot.pid = process.pid
        slot.started = self.clock.seconds()
        self.log.info("worker {worker} started (pid {pid})", worker=slot.number, pid=slot.pid)

    # -- a worker's end --------------------------------------------------------------------

    def ended(self, slot: Slot, reason: BaseException) -> None:
        """``slot``'s process has exited (and its output has been read)."""
        slot.process = None
        status = getattr(reason, "exitCode", None)
        sig = getattr(reason, "signal", None)
        how = f"was killed by {_signal_name(sig)}" if sig else f"exited with status {status}"
        if self.running:
            self._died(slot, how, slot.pid, status, sig)
            return
        self.log.info(
            "worker {worker} (pid {pid}) {how}", worker=slot.number, pid=slot.pid, how=how,
            status=status, signal=sig,
        )  # fmt: skip
        if self._all_ended is not None and all(s.process is None for s in self.slots):
            self._done_stopping()

    def _died(
        self, slot: Slot, how: str, pid: int | None, status: int | None, sig: int | None
    ) -> None:
        """A worker ended (or could not start) while it should run: start it again,
        later for each quick death in a row."""
        now = self.clock.seconds()
        lived = now - slot.started if pid is not None else 0.0
        slot.failures = slot.failures + 1 if lived < HEALTHY else 1
        fields = {"worker": slot.number, "pid": pid, "how": how, "status": status,
                  "signal": sig, "lived": lived}  # fmt: skip
        which = "worker {worker} {how}" if pid is None else "worker {worker} (pid {pid}) {how}"
        if all(self._failing(s, now) for s in self.slots):
            self.log.critical(
                which + "; every worker has died within {healthy:g} s of starting "
                "{times} times in a row: stopping the server",
                healthy=HEALTHY, times=GIVE_UP, **fields,
            )  # fmt: skip
            self.give_up()
            return
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (slot.failures - 1))
        after = "" if pid is None else " after {lived:.1f} s"
        self.log.warn(
            which + after + "; restarting it in {delay:g} s", delay=delay, **fields,
        )  # fmt: skip
        slot.restart = self.clock.callLater(delay, self._start, slot)

    @staticmethod
    def _failing(slot: Slot, now: float) -> bool:
        """Whether ``slot`` is in a crash loop: GIVE_UP quick deaths in a row, and not
        running for HEALTHY seconds since."""
        young = slot.process is None or now - slot.started < HEALTHY
        return slot.failures >= GIVE_UP and young

    # -- stopping --------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None] | None:
        """SIGTERM every worker and wait for them; SIGKILL any still there after
        ``STOP_GRACE``, and wait at most ``KILL_WAIT`` more."""
        super().stopService()
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
        running = [slot for slot in self.slots if slot.process is not None]
        if not running:
            return None
        self.log.info("stopping {count} workers", count=len(running))
        for slot in running:
            self._signal(slot, "TERM")
        self._all_ended = defer.Deferred()
        self._stop_call = self.clock.callLater(STOP_GRACE, self._kill_stragglers)
        return self._all_ended

    def _kill_stragglers(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                self.log.warn(
                    "worker {worker} (pid {pid}) did not stop within {grace:g} s: killing it",
                    worker=slot.number, pid=slot.pid, grace=STOP_GRACE,
                )  # fmt: skip
                self._signal(slot, "KILL")
        self._stop_call = self.clock.callLater(KILL_WAIT, self._stop_waiting)

    def _stop_waiting(self) -> None:
        self._stop_call = None
        left = [slot.pid for slot in self.slots if slot.process is not None]
        self.log.error("workers {pids} still there after SIGKILL: not waiting for them",
                       pids=left)  # fmt: skip
        self._done_stopping()

    def _done_stopping(self) -> None:
        if self._stop_call is not None and self._stop_call.active():
            self._stop_call.cancel()
        self._stop_call = None
        done, self._all_ended = self._all_ended, None
        if done is not None:
            done.callback(None)

    @staticmethod
    def _signal(slot: Slot, name: str) -> None:
        if slot.process is not None:
            with contextlib.suppress(error.ProcessExitedAlready):
                slot.process.signalProcess(name)

    # -- the workers' log ------------------------------------------------------------------

    def forward(self, number: int, line: bytes) -> None:
        """A line of worker ``number``'s stdout: one of its log events, into our log."""
        self.log.observer(worker_event(line, number, self.clock.seconds()))

    def stderr(self, number: int, line: bytes) -> None:
        """A line a worker wrote to stderr before (or instead of) logging it."""
        self.log.warn("{line}", line=line.decode("utf-8", "replace"), worker=number,
                      log_system=f"worker {number} stderr")  # fmt: skip


class WorkerProcess(protocol.ProcessProtocol):
    """One worker process as its supervisor sees it: two line streams and an end."""

    def __init__(self, supervisor: Supervisor, slot: Slot) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self._out = Lines()
        self._err = Lines()

    def outReceived(self, data: bytes) -> None:
        for line in self._out.feed(data):
            self.supervisor.forward(self.slot.number, line)

    def errReceived(self, data: bytes) -> None:
        for line in self._err.feed(data):
            self.supervisor.stderr(self.slot.number, line)

    def processEnded(self, reason: Any) -> None:
        for line in self._out.rest():
            self.supervisor.forward(self.slot.number, line)
        for line in self._err.rest():
            self.supervisor.stderr(self.slot.number, line)
        self.supervisor.ended(self.slot, reason.value)


class Lines:
    """Bytes from a pipe as complete lines; an unfinished one is held, up to
    ``MAX_LOG_LINE`` bytes (beyond that it is passed on cut)."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> list[bytes]:
        *lines, self._held = (self._held + data).split(b"\n")
        if len(self._held) > MAX_LOG_LINE:
            lines.append(self._held[:MAX_LOG_LINE])
            self._held = b""
        return [line for line in lines if line.strip()]

    def rest(self) -> list[bytes]:
        held, self._held = self._held, b""
        return [held] if held.strip() else []


def worker_event(line: bytes, number: int, now: float) -> dict[str, Any]:
    """A line of a worker's stdout as an event of the parent's log, saying which worker:
    the worker's own event (JSON) with its time, level and fields, or the line as text."""
    text = line.decode("utf-8", "replace").strip("\x1e\r")
    event: Any = None
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            event = eventFromJSON(text)
    if not isinstance(event, dict) or event.get("log_level") not in _LEVELS:
        event = {"log_format": "{line}", "line": text, "log_level": LogLevel.info,
                 "log_namespace": __name__, "log_time": now}  # fmt: skip
    system = event.get("log_system") or f"{event.get('log_namespace')}#{event['log_level'].name}"
    event["log_system"] = f"worker {number} {system}"
    event["worker"] = number
    return event


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
