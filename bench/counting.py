"""What one count and one timing cost, with ``timeit``: the choices behind ``--metrics``.

    python -m bench.counting

- A counter always added to (``core.tally.Tally``: ``self.rules.tally.bytes_out +=
  len(data)``) against an optional one (``None`` when metrics are off, checked first),
  off and on, for the count made on every write and for the one made per message.
- The histogram ``--metrics`` uses (``metrics.Histogram``: a ``bisect`` into fixed
  buckets) against prometheus_client's own ``Histogram.observe``.
- Two ``time.perf_counter()`` calls, what each timing adds around it.

Best of 7 repeats of 1,000,000 each, in nanoseconds, the empty loop's time subtracted.
"""

from __future__ import annotations

import timeit

SETUP = """
from time import perf_counter

import prometheus_client

from twisted_chat.core.tally import Tally
from twisted_chat.metrics import TIME_BUCKETS, Histogram


class Rules:
    __slots__ = ("metrics", "tally")


class Connection:
    __slots__ = ("rules",)


off, on = Rules(), Rules()
off.tally, off.metrics = Tally(), None
on.tally, on.metrics = Tally(), Tally()
conn_off, conn_on = Connection(), Connection()
conn_off.rules, conn_on.rules = off, on
data = b"x" * 200
ours = Histogram(TIME_BUCKETS)
theirs = prometheus_client.Histogram(
    "x", "x", buckets=TIME_BUCKETS, registry=prometheus_client.CollectorRegistry()
)
"""

CASES = {
    "per write, always counted: rules.tally.bytes_out += len(data)": (
        "conn_off.rules.tally.bytes_out += len(data)"
    ),
    "per write, optional, metrics off: if rules.metrics is not None": (
        "m = conn_off.rules.metrics\nif m is not None: m.bytes_out += len(data)"
    ),
    "per write, optional, metrics on": (
        "m = conn_on.rules.metrics\nif m is not None: m.bytes_out += len(data)"
    ),
    "per message, always counted: tally.messages += 1": "off.tally.messages += 1",
    "per message, optional, metrics off": "m = off.metrics\nif m is not None: m.messages += 1",
    "per message, optional, metrics on": "m = on.metrics\nif m is not None: m.messages += 1",
    "our Histogram.observe (bisect)": "ours.observe(0.0003)",
    "prometheus_client Histogram.observe": "theirs.observe(0.0003)",
    "two perf_counter() calls": "a = perf_counter(); b = perf_counter()",
}


def measure(statement: str) -> float:
    """Nanoseconds per run of ``statement``, best of 7."""
    return min(timeit.repeat(statement, SETUP, number=1_000_000, repeat=7)) * 1000


def main() -> None:
    empty = measure("pass")
    for name, statement in CASES.items():
        print(f"{measure(statement) - empty:6.1f} ns  {name}", flush=True)


if __name__ == "__main__":
    main()
