"""Who may connect: limits counted over every front door of one server.

A connection is counted by network (an IPv6 /64 is one host) from the moment a front
door accepts it until it is gone, whichever door it used; a flood of refusals pauses
accepting on every listening port for a moment.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from twisted_chat.rules.limits import TokenBucket
from twisted_chat.rules.login import network_key

MAX_TRACKED_ADDRESSES = 10_000  # connection-rate buckets kept, least recently seen dropped
# Refusals a second the server makes before it stops accepting for ACCEPT_PAUSE: each one
# costs an accept() before it can be refused, so a client reconnecting as fast as it can
# would otherwise take the whole core.
REFUSAL_BUDGET = 200.0
# Refusals in a row before the budget applies.  Smaller bursts pause more often, and the
# listen queue then overflows: measured, a newcomer waited 7.6 s at 20, 30-80 ms at 200.
REFUSAL_BURST = 200.0
ACCEPT_PAUSE = 0.05
# A worker of ``--workers N`` whose share of --max-clients is full stops accepting for up
# to this long (until one of its clients leaves), so the others, sharing its listening
# socket, take the newcomers: a full worker refuses fast, so it would win every accept.
FULL_PAUSE = 1.0
REFUSAL_LOG_EVERY = 10.0  # seconds between log lines about one refused address
REFUSAL_TELL_FOR = 1.0  # after one, its refusals say why for this long, then just close
# A refused connection is held open, unread, this long before it is closed: a client that
# reconnects as soon as it is closed (a password guesser, a reconnect loop) then costs one
# accept per hold instead of one per round trip, however fast its network.
REFUSAL_HOLD = 2.0
# Refused connections held at once (each an open file); past this they are closed at once.
MAX_HELD_REFUSALS = 256


class LogThrottle:
    """One log line per key (an address) per ``every`` seconds, with a count of the lines
    held back in between: a client refused thousands of times a second must not fill
    the disk.  At most ``MAX_TRACKED_ADDRESSES`` keys are remembered."""

    def __init__(self, every: float = REFUSAL_LOG_EVERY) -> None:
        self.every = every
        self._keys: OrderedDict[str, list[float]] = OrderedDict()

    def due(self, key: str, now: float) -> int | None:
        """The lines held back since ``key``'s last one (log one now), or None: it was
        logged a moment ago, and this one is counted instead."""
        entry = self._keys.get(key)
        if entry is not None and now < entry[0] + self.every:
            entry[1] += 1
            return None
        self._keys[key] = [now, 0]
        self._keys.move_to_end(key)
        if len(self._keys) > MAX_TRACKED_ADDRESSES:
            self._keys.popitem(last=False)
        return int(entry[1]) if entry is not None else 0

    def last(self, key: str) -> float | None:
        """When ``key`` was last logged."""
        entry = self._keys.get(key)
        return None if entry is None else entry[0]

    @staticmethod
    def more(count: int) -> str:
        """The count, as the log line's ending."""
        return f" ({count} more refused since the last line)" if count else ""


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a connection may not come in, and whether it is worth saying."""

    reason: str
    tell: bool  # False: told a moment ago and back already; say nothing
    hold: bool  # True: keep it open for REFUSAL_HOLD (MAX_HELD_REFUSALS is not reached)


class Admission:
    """Connection limits: in total, per address, and new connections per address a second."""

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.max_clients: int | None = None
        self.max_per_address: int | None = None
        # New connections per second from one address (bursts of twice that): a client
        # reconnecting in a loop costs an accept and a refusal, not a session each time.
        self.connect_rate: float | None = None
        self.total = 0
        self.per_address: Counter[str] = Counter()
        self.held = 0  # refused connections being held open (see REFUSAL_HOLD)
        self.refused = 0  # connections refused since the start, for --metrics
        self._arrivals: OrderedDict[str, TokenBucket] = OrderedDict()
        self._refusal_log = LogThrottle()
        # Listening ports (anything with stopReading/startReading), so that a flood of
        # refusals can pause them.
        self.ports: list[Any] = []
        self._refusals: TokenBucket | None = None
        self._accept_resume: IDelayedCall | None = None
        self._pauses = 0
        self._paused: list[Any] = []
        self._stepped_aside = False  # the pause is for being full, not for a flood
        # The listening socket is shared with other processes (--workers): when full,
        # step aside rather than refuse what another worker could seat.
        self.shared_port = False
        # Addresses and networks banned from the whole server (core.moderation.ServerBans).
        self.server_bans: Any = None

    def admit(self, addr: object) -> tuple[str, Refused | None]:
        """Count a new connection from ``addr`` in, or say why not: (its key, refusal)."""
        # An IPv6 host usually holds a whole /64: counted as one address, not 2**64.
        host = network_key(str(getattr(addr, "host", "local")))
        reason = self._refusal(host)
        if reason is not None:
            self.refused += 1
            self._step_aside_when_full()
            self._count_refusal()
            tell = self._log_refusal(host, reason)
            return host, Refused(reason, tell, self.held < MAX_HELD_REFUSALS)
        self.total += 1
        self.per_address[host] += 1
        self._step_aside_when_full()
        return host, None

    def released(self, host: str) -> None:
        """A connection counted by ``admit`` is gone."""
        self.total -= 1
        self.per_address[host] -= 1
        if self.per_address[host] <= 0:
            del self.per_address[host]
        if self._stepped_aside and self._accept_resume is not None and not self._full():
            self._accept_resume.cancel()
            self._resume_accepting(self._paused)

    def _step_aside_when_full(self) -> None:
        if self.shared_port and self._full() and self._accept_resume is None:
            self._stepped_aside = self._pause(FULL_PAUSE)

    def _full(self) -> bool:
        return self.max_clients is not None and self.total >= self.max_clients

    def _refusal(self, host: str) -> str | None:
        bans = self.server_bans
        if bans is not None and bans.bans:
            ban = bans.find(host)
            if ban is not None:
                why = f": {ban.reason}" if ban.reason else ""
                return f"your address is banned from this server{why}"
        if self._full():
            return f"the server is full ({self.max_clients} connections); try again later"
        if self.max_per_address is not None and self.per_address[host] >= self.max_per_address:
            return f"too many connections from your address (at most {self.max_per_address})"
        if self.connect_rate is not None:
            now = self.clock.seconds()
            bucket = self._arrivals.get(host)
            if bucket is None:
                bucket = self._arrivals[host] = TokenBucket(
                    self.connect_rate, 2 * self.connect_rate, now
                )
                if len(self._arrivals) > MAX_TRACKED_ADDRESSES:
                    self._arrivals.popitem(last=False)  # the longest unseen: full again
            else:
                self._arrivals.move_to_end(host)
            if bucket.wait(now) > 0:
                return (
                    "too many new connections from your address "
                    f"(at most {self.connect_rate:g} a second); wait a moment"
                )
            bucket.take(now)
        return None

    def _count_refusal(self) -> None:
        """Over ``REFUSAL_BUDGET`` refusals a second (bursts of ``REFUSAL_BURST``), stop
        accepting for ``ACCEPT_PAUSE``.

        Members keep their latency; newcomers wait a few milliseconds in the kernel's
        listen queue.
        """
        now = self.clock.seconds()
        if self._refusals is None:
            self._refusals = TokenBucket(REFUSAL_BUDGET, REFUSAL_BURST, now)
        self._refusals.take(now)
        if self._refusals.tokens >= 0 or self._accept_resume is not None:
            return
        if not self._pause(ACCEPT_PAUSE):
            return
        self._pauses += 1
        if self._pauses == 1 or self._pauses % 100 == 0:
            self.log.warn(
                "refusing over {budget:g} connections a second: not accepting for "
                "{pause:g} s at a time ({pauses} pauses so far)",
                budget=REFUSAL_BUDGET,
                pause=ACCEPT_PAUSE,
                pauses=self._pauses,
            )

    def _pause(self, seconds: float) -> bool:
        """Stop accepting for ``seconds`` (unless already paused); False: no port."""
        if self._accept_resume is not None:
            return True
        ports = [p for p in self.ports if hasattr(p, "stopReading") and hasattr(p, "startReading")]
        if not ports:
            return False
        for port in ports:
            port.stopReading()
        self._paused = ports
        self._accept_resume = self.clock.callLater(seconds, self._resume_accepting, ports)
        return True

    def listening(self, port: object) -> None:
        """``port`` accepts connections counted here: a flood of refusals may pause it."""
        self.ports.append(port)

    def closing(self, port: object) -> None:
        """``port`` is closing: no pause may outlive it."""
        if port in self.ports:
            self.ports.remove(port)
        if not self.ports and self._accept_resume is not None:
            if self._accept_resume.active():
                self._accept_resume.cancel()
            self._accept_resume = None

    def _resume_accepting(self, paused: list[Any]) -> None:
        self._accept_resume = None
        self._paused = []
        self._stepped_aside = False
        for port in paused:
            if port not in self.ports:
                continue  # closed meanwhile
            try:
                port.startReading()
            except Exception:
                self.log.failure("resuming accepting failed")

    def _log_refusal(self, host: str, reason: str) -> bool:
        """One line per address per ``REFUSAL_LOG_EVERY`` seconds, with a count of the rest.

        True when the refused peer should be told why: the first time in a while.
        """
        now = self.clock.seconds()
        more = self._refusal_log.due(host, now)
        if more is None:
            last = self._refusal_log.last(host)
            return last is not None and now - last < REFUSAL_TELL_FOR
        self.log.warn(
            "refused {host}: {reason}{more}",
            host=host,
            reason=reason,
            more=LogThrottle.more(more),
        )
        return True
