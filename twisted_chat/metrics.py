"""``--metrics``: Prometheus text at ``/metrics`` and a health check at ``/healthz``.

Everything here runs on the reactor thread.  The counters are plain integers the chat,
the rules and the doors add to as things happen (``core.tally.Tally``, and a few on
objects that exist anyway: ``Admission.refused``, the backplane ``Node``'s traffic); a
custom collector reads them, and what it has to compute (members, rooms, the send
queues' sum), when ``/metrics`` is asked for.  The page is served by ``twisted.web`` in
the reactor, not by prometheus_client's HTTP server thread, so nothing reactor-owned is
read from another thread.

What costs more than an add is only set up here, with ``--metrics``: the fan-out and
command timers (``Sampler``: a call of the core's delivery, here ``MeasuredDelivery``
which also counts, and one of its dispatcher, at most every ``SAMPLE_EVERY``) and
the reactor lag loop (``ReactorLag``).  Their histograms are ``Histogram``: fixed
buckets and a ``bisect``, about 0.1 us an observation where prometheus_client's own
takes 0.6 us (a lock, and an object per bucket).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.application import service
from twisted.internet import task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twisted_chat import __version__
from twisted_chat.core.events import Batch, Event
from twisted_chat.core.local import REMOTE, LocalDelivery
from twisted_chat.core.tally import DISCONNECT_REASONS

if TYPE_CHECKING:
    from twisted_chat.backplane.redis import RedisLink
    from twisted_chat.core.service import ChatService, Member
    from twisted_chat.rules.connection import Rules

# Seconds.  One fan-out to a room of 1000 takes about 1 ms here; a command a few us.
TIME_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_INTERVAL = 0.5  # seconds between the reactor lag loop's looks
# Seconds between timed calls: after one fan-out (or command) was timed, the next is
# timed no sooner than this.  Timing one costs about 0.2 us (two clock reads and a
# bisect), and even a countdown choosing one call in N costs a call or a check on every
# one; arming the next timed call from a timer costs the calls in between nothing at
# all.  Up to ten samples a second when busy, 600 a minute: enough for a histogram, and
# few enough timer wake-ups to be lost in the noise of a paced load.
SAMPLE_EVERY = 0.1
DOORS = ("line", "web")  # the front doors' names in groupchat_connections{door}


class Histogram:
    """Counts of observations per fixed bucket, and their sum: what a Prometheus
    histogram reports, for the cost of a ``bisect`` and two adds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le, "<=").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """Prometheus' cumulative buckets, ``+Inf`` last."""
        buckets = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            buckets.append((_float(bound), total))
        total += self.counts[-1]
        buckets.append(("+Inf", total))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


def _float(value: float) -> str:
    return repr(float(value))


class Sampler:
    """Times one call of ``real``'s ``methods`` now and then at no cost to the calls in
    between: while armed, the attributes its callers read it from (``places``: holder and
    attribute name) hold a stand-in whose timed method puts ``real`` back, times the real
    call, and arms again ``every`` seconds later (at once when ``every`` is 0).

    Only the holders' values change: shadowing the method on ``real`` itself instead (an
    instance attribute set and deleted) changes its dict's keys each time, and that
    undoes the interpreter's specialized attribute look-ups on it for the calls after.
    """

    def __init__(
        self,
        real: Any,
        methods: Sequence[str],
        places: Sequence[tuple[object, str]],
        clock: IReactorTime,
        every: float,
        timer: Callable[[], float] = perf_counter,
    ) -> None:
        self.real = real
        self.places = tuple(places)
        self.clock = clock
        self.every = every
        self.timer = timer
        self.time = Histogram(TIME_BUCKETS)
        self.stand_in = _StandIn(real)
        for name in methods:
            setattr(self.stand_in, name, self._timed(getattr(real, name)))
        self._later: IDelayedCall | None = None
        self.arm()

    def arm(self) -> None:
        self._cancel()
        for holder, name in self.places:
            setattr(holder, name, self.stand_in)

    def stop(self) -> None:
        """Disarmed for good: nothing left scheduled."""
        self._cancel()
        self._put_back()

    def _cancel(self) -> None:
        later, self._later = self._later, None
        if later is not None and later.active():
            later.cancel()

    def _put_back(self) -> None:
        for holder, name in self.places:
            setattr(holder, name, self.real)

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            self._put_back()  # calls made inside this one are not timed again
            timer = self.timer
            start = timer()
            try:
                return method(*args)
            finally:
                self.time.observe(timer() - start)
                if self.every <= 0:
                    self.arm()
                else:
                    self._later = self.clock.callLater(self.every, self.arm)

        return timed


class _StandIn:
    """What a ``Sampler``'s holders hold while it is armed: its timed methods, and the
    real object's everything else."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class MeasuredDelivery(LocalDelivery):
    """The core's delivery (straight to each member's participant), counted.

    ``deliveries`` counts each recipient on this node of every fan-out (other nodes'
    members, whose delivery here does nothing, are not counted).  A broadcast a front
    door's ``gather`` takes whole is counted by its batcher as it writes (``written``);
    what is handed out one by one is counted here.  A ``Batch`` grows after it was
    handed out (the core appends the next lines of the same input turn to it), so its
    recipients are counted once more for each event it ends up holding: settled at the
    next fan-out counted here, by which time the core has sealed it, and read as it
    stands by the collector meanwhile.
    """

    def __init__(self) -> None:
        self.settled = 0
        self._open: tuple[Batch, int] | None = None  # the batch last handed out
        # Deliveries the doors' batcher counted as it wrote gathered broadcasts.
        self.written: Callable[[], int] | None = None
        # Deliveries to other nodes' members, which do nothing here: counted to be left
        # out, and only with --metrics (the core's REMOTE does nothing at all otherwise).
        self.remote = 0

        def handed(event: Event) -> None:
            self.remote += 1

        REMOTE.deliver = handed  # type: ignore[method-assign]

    def fanout(
        self, members: Iterable[Member], event: Event, exclude: Member | None
    ) -> list[Member]:
        if type(members) is not dict and not isinstance(members, list | set | tuple):
            members = list(members)
        # Counted before: a recipient dropped meanwhile (its queue overflowed) leaves
        # the room while it is being told.
        count = len(members) - (exclude is not None and exclude in members)
        remote = self.remote
        failed = LocalDelivery.fanout(self, members, event, exclude) if members else []
        if failed:
            count -= len(failed)
        count -= self.remote - remote
        self._settle(event, count)
        return failed

    def _settle(self, event: Event, count: int) -> None:
        """Count the batch handed out before (sealed now, with all it came to hold)
        and ``count`` deliveries of ``event``, kept open if it is a batch."""
        pending = self._open
        if pending is not None:
            self.settled += pending[1] * (len(pending[0].events) - 1)
        self._open = (event, count) if type(event) is Batch else None
        self.settled += count

    @property
    def deliveries(self) -> int:
        pending = self._open
        extra = 0 if pending is None else pending[1] * (len(pending[0].events) - 1)
        return self.settled + extra + (self.written() if self.written is not None else 0)


class ReactorLag:
    """How late the reactor runs a call due every ``interval`` seconds: a busy reactor
    (a long fan-out, a garbage collection) makes everything wait that long.

    Its function never raises, so the ``LoopingCall`` never stops.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, interval: float = LAG_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self.time = Histogram(LAG_BUCKETS)
        self.last = 0.0
        self._start = 0.0
        self._due = 0.0
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = clock

    def start(self) -> None:
        self._start = self.clock.seconds()
        self._due = self._start + self.interval
        self.loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def tick(self) -> None:
        now = self.clock.seconds()
        try:
            self.last = lag = max(0.0, now - self._due)
            self.time.observe(lag)
        except Exception:
            self.log.failure("measuring the reactor's lag failed")
        # When the LoopingCall runs next: the next multiple of the interval from its
        # start (it skips the beats a long stall made it miss).
        self._due = self._start + self.interval * (
            math.floor((now - self._start) / self.interval) + 1
        )


class ChatCollector(Collector):
    """Reads the counters, and computes the gauges, when ``/metrics`` is asked for."""

    def __init__(
        self,
        chat: ChatService,
        rules: Rules,
        delivery: MeasuredDelivery,
        fanouts: Sampler,
        commands: Sampler,
        lag: ReactorLag,
        link: RedisLink | None = None,
    ) -> None:
        self.chat = chat
        self.rules = rules
        self.delivery = delivery
        self.fanouts = fanouts
        self.commands = commands
        self.lag = lag
        self.link = link

    def collect(self) -> Iterator[Metric]:
        chat, rules, tally = self.chat, self.rules, self.chat.tally
        yield InfoMetricFamily("groupchat_build", "groupchat's version.", {"version": __version__})
        current = GaugeMetricFamily(
            "groupchat_connections", "Connections open, by front door.", labels=["door"]
        )
        accepted = CounterMetricFamily(
            "groupchat_connections_accepted",
            "Connections admitted since the start, by front door (refusals not included).",
            labels=["door"],
        )
        for door in dict.fromkeys((*DOORS, *tally.accepted)):
            opened = tally.accepted.get(door, 0)
            current.add_metric([door], opened - tally.ended.get(door, 0))
            accepted.add_metric([door], opened)
        yield current
        yield accepted
        yield GaugeMetricFamily(
            "groupchat_members", "Members connected to this server.", len(chat.members)
        )
        yield GaugeMetricFamily("groupchat_rooms", "Rooms that exist.", chat.rooms.count())
        messages = CounterMetricFamily(
            "groupchat_messages_received",
            "Messages this server's members sent: to rooms (lines and /me), and private.",
            labels=["kind"],
        )
        messages.add_metric(["room"], tally.messages)
        messages.add_metric(["private"], tally.privates)
        yield messages
        yield CounterMetricFamily(
            "groupchat_deliveries",
            "Events handed to members by fan-out (room lines, joins, leaves, private "
            "messages...), one per recipient on this server.",
            self.delivery.deliveries,
        )
        yield CounterMetricFamily(
            "groupchat_received_bytes", "Bytes read from chat connections.", tally.bytes_in
        )
        yield CounterMetricFamily(
            "groupchat_sent_bytes",
            "Bytes written (or queued) to chat connections.",
            tally.bytes_out,
        )
        disconnects = CounterMetricFamily(
            "groupchat_disconnects",
            "Connections ended or refused, by reason (see README, Metrics).",
            labels=["reason"],
        )
        reasons = dict(tally.disconnects)
        reasons["refused"] = reasons.get("refused", 0) + rules.admission.refused
        for reason in dict.fromkeys((*DISCONNECT_REASONS, *reasons)):
            disconnects.add_metric([reason], reasons.get(reason, 0))
        yield disconnects
        yield CounterMetricFamily(
            "groupchat_login_failures",
            "Failed login attempts (wrong password, or a name that cannot be a nickname).",
            tally.login_failures,
        )
        yield self.fanouts.time.family(
            "groupchat_fanout_seconds",
            f"Time to hand one event (or batch) to its recipients; at most one every "
            f"{self.fanouts.every:g} s timed.",
        )
        yield self.commands.time.family(
            "groupchat_command_seconds",
            f"Time to act on one line a member typed; at most one every "
            f"{self.commands.every:g} s timed.",
        )
        yield self.lag.time.family(
            "groupchat_reactor_lag_seconds",
            f"How late a call due every {self.lag.interval:g} s ran.",
        )
        yield GaugeMetricFamily(
            "groupchat_reactor_lag_last_seconds",
            "How late the last of those calls ran.",
            self.lag.last,
        )
        yield GaugeMetricFamily(
            "groupchat_send_queue_bytes",
            "Output waiting for members that read slowly (beyond what Twisted buffers).",
            sum(getattr(m.participant, "queued", 0) for m in chat.members),
        )
        if self.link is not None:
            yield from self._backplane(self.link)

    def _backplane(self, link: RedisLink) -> Iterator[Metric]:
        node = link.node
        envelopes = CounterMetricFamily(
            "groupchat_backplane_envelopes",
            "Envelopes (heartbeats included) sent to and received from the other nodes.",
            labels=["direction"],
        )
        envelopes.add_metric(["out"], node.envelopes_out)
        envelopes.add_metric(["in"], node.envelopes_in)
        yield envelopes
        traffic = CounterMetricFamily(
            "groupchat_backplane_bytes",
            "Bytes of those envelopes.",
            labels=["direction"],
        )
        traffic.add_metric(["out"], node.bytes_out)
        traffic.add_metric(["in"], node.bytes_in)
        yield traffic
        yield GaugeMetricFamily(
            "groupchat_backplane_connected",
            "1 while this node is joined to the network, 0 while split from it.",
            1 if link.connected() else 0,
        )
        yield GaugeMetricFamily(
            "groupchat_backplane_nodes",
            "Nodes of the network this node knows of, itself included.",
            1 + len(node.seen),
        )
        yield GaugeMetricFamily(
            "groupchat_backplane_lag_seconds",
            "How late this node read its own last heartbeat back from the network.",
            link.lag,
        )
        yield GaugeMetricFamily(
            "groupchat_backplane_backlog_bytes",
            "What Redis holds unsent for this node's subscription (0 where CLIENT LIST "
            "is refused).",
            link.backlogs.get(node.id, 0),
        )


class MetricsPage(Resource):
    """``/metrics``: the registry in Prometheus' text format, rendered on the spot."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


class Health(Resource):
    """``/healthz``: 200 ``ok`` while the chat service runs (started, not stopping)."""

    isLeaf = True

    def __init__(self, chat: ChatService) -> None:
        super().__init__()
        self.chat = chat

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.chat.running:
            return b"ok\n"
        request.setResponseCode(503)
        return b"stopping\n"


class MetricsSite(Site):
    noisy = False

    def logPrefix(self) -> str:
        return "groupchat-metrics"

    def log(self, request: Any) -> None:
        """No access log: a scrape every few seconds would fill it."""


# Scrapers at once: a Prometheus server or two, a curl. Beyond, a connection is closed at
# once, so slow connections to this port cannot use up the descriptors the chat needs.
SCRAPERS_MAX = 16


class CappedSite(policies.WrappingFactory):
    """The site, closing connections beyond ``SCRAPERS_MAX`` at accept."""

    noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= SCRAPERS_MAX:
            return None
        return super().buildProtocol(addr)


class Metrics(service.Service):
    """What ``--metrics`` adds to a node: the timers in the core, the lag loop (run
    while the service runs) and the site that serves them."""

    name = "groupchat-metrics"

    def __init__(
        self,
        chat: ChatService,
        rules: Rules,
        clock: IReactorTime,
        link: RedisLink | None = None,
        every: float = SAMPLE_EVERY,
    ) -> None:
        self.delivery = MeasuredDelivery()
        self.delivery.gather = getattr(chat.delivery, "gather", None)  # the doors' batcher
        self.delivery.written = lambda: rules.batcher.delivered
        chat.delivery = self.delivery
        # Timed where they are read for each event and each line: the core's delivery,
        # and the dispatcher as the front doors read it (the rules' copy).
        self.fanouts = Sampler(
            self.delivery, ("fanout", "broadcast"), [(chat, "delivery")], clock, every
        )
        self.commands = Sampler(
            rules.dispatcher, ("dispatch",), [(rules, "dispatcher")], clock, every
        )
        self.lag = ReactorLag(clock)
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ChatCollector(
            chat, rules, self.delivery, self.fanouts, self.commands, self.lag, link
        )
        self.registry.register(self.collector)
        root = Resource()
        root.putChild(b"metrics", MetricsPage(self.registry))
        root.putChild(b"healthz", Health(chat))
        self.site = CappedSite(MetricsSite(root, timeout=30))

    def startService(self) -> None:
        super().startService()
        self.lag.start()
        self.fanouts.arm()
        self.commands.arm()

    def stopService(self) -> None:
        super().stopService()
        self.lag.stop()
        self.fanouts.stop()
        self.commands.stop()
