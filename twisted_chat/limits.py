"""Rate limiting as a pure rule: a token bucket that is told the time, never reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputLimits:
    """How fast one connection may send: lines and bytes per second, each with a burst.

    Lines over the rate are delayed (the connection is not read meanwhile); a connection
    that stays at the limit for ``flood_timeout`` seconds is disconnected as flooding.
    ``/ping`` heartbeats do not count against the line rate (they do against bytes).
    """

    rate: float = 5.0
    burst: float = 10.0
    byte_rate: float = 16384.0
    byte_burst: float = 65536.0
    flood_timeout: float = 60.0


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
