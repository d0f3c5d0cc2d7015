"""Input limits as pure rules: told the time, never reading it, so tests drive them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class InputLimits:
    """How fast one connection may send: lines and bytes per second, each with a burst.

    Every byte received counts against ``byte_rate``, telnet negotiation and unfinished
    lines included; lines also count against ``rate``.  Over either, the connection is
    not read until it is back within them.  A connection held back for
    ``flood_timeout`` seconds in a row is disconnected as flooding.  A few ``/ping``
    heartbeats a second (``ping_rate``, bursts of ``ping_burst``) are free of the line
    rate; faster ones are charged like any line.
    """

    rate: float = 5.0
    burst: float = 10.0
    byte_rate: float = 16384.0
    byte_burst: float = 65536.0
    flood_timeout: float = 60.0
    ping_rate: float = 2.0
    ping_burst: float = 5.0


class TokenBucket:
    """``rate`` tokens per second accrue up to ``burst``; taking one costs one token."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, now: float, amount: float = 1.0) -> float:
        """Seconds until ``amount`` tokens are there (0: now); takes nothing."""
        self._refill(now)
        need = min(amount, self.burst) - self.tokens
        # Below a microsecond's worth is rounding error: waiting for it would reschedule
        # at the same instant forever.
        return 0.0 if need <= self.rate * 1e-6 else need / self.rate

    def take(self, now: float, amount: float = 1.0) -> None:
        """Spend ``amount`` (may go negative for a single oversized amount)."""
        self._refill(now)
        self.tokens -= amount

    def debt(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0 when it holds a token or more)."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class InputGovernor:
    """One connection's input budget, and how long it has been held back.

    The protocol reports bytes as they arrive and asks before acting on each line; the
    governor answers how long to wait.  Being *held back* is measured as an episode: it
    starts the first time the connection must wait and ends only once it has gone
    ``gap`` seconds without having to.  A server that stalls (and so refills every
    bucket) therefore cannot reset a flooder's clock; a client sending within its
    limits is never held for long.
    """

    __slots__ = ("bytes", "gap", "held_since", "limits", "lines", "pings", "released_at")

    def __init__(self, limits: InputLimits, now: float) -> None:
        self.limits = limits
        self.lines = TokenBucket(limits.rate, limits.burst, now)
        self.bytes = TokenBucket(limits.byte_rate, limits.byte_burst, now)
        self.pings = TokenBucket(limits.ping_rate, limits.ping_burst, now)
        self.gap = max(1.0, limits.burst / limits.rate)
        self.held_since: float | None = None
        self.released_at: float | None = None

    def received(self, size: int, now: float) -> float:
        """Charge ``size`` bytes just read; the seconds to stop reading for (0: none)."""
        self.bytes.take(now, size)
        return self.bytes.debt(now)

    def reading_wait(self, now: float) -> float:
        """Seconds until the byte budget allows reading again."""
        return self.bytes.debt(now)

    def admit(self, now: float, heartbeat: bool = False) -> float:
        """0 when a line may be acted on now (and charge it), else the seconds to wait."""
        if heartbeat and self.pings.wait(now) == 0:
            self.pings.take(now)
            return 0.0
        wait = self.lines.wait(now)
        if wait == 0:
            self.lines.take(now)
        return wait

    def hold(self, now: float) -> bool:
        """The connection must wait now; True when this starts a new episode."""
        new = self.held_since is None or (
            self.released_at is not None and now - self.released_at > self.gap
        )
        if new:
            self.held_since = now
        self.released_at = None
        return new

    def release(self, now: float) -> None:
        """Nothing of this connection waits any more."""
        if self.held_since is not None and self.released_at is None:
            self.released_at = now

    def held_for(self, now: float) -> float:
        """Seconds held back in the current episode (0 when it is over)."""
        if self.held_since is None:
            return 0.0
        if self.released_at is not None and now - self.released_at > self.gap:
            return 0.0
        return now - self.held_since


class LineTooLong:
    """Marker a front door hands on once per line over ``--max-line``, in place of it."""

    __slots__ = ()


TOO_LONG = LineTooLong()


class NotALine:
    """Something a front door read that is no line but costs one against ``--rate``: an
    action run when its turn comes (a WebSocket ping's pong, a binary message's error).

    So input that is not text is held to the line rate like text, and its answers wait
    behind the lines before it.
    """

    __slots__ = ("act",)

    def __init__(self, act: Callable[[], None]) -> None:
        self.act = act


# What a front door hands to its Connection, in order.
Item = bytes | LineTooLong | NotALine
