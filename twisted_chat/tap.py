"""twistd integration: the ``groupchat`` options and the service tree they build.

The plugin file only names this module, so importing it must stay cheap and must not
install a reactor.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.application import service
from twisted.cred import strcred
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer, endpoints, protocol, tcp, unix
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python import usage

from twisted_chat import __version__
from twisted_chat.core.errors import ChatError
from twisted_chat.core.names import skeleton
from twisted_chat.core.service import ChatService, HeartbeatPolicy
from twisted_chat.doors.line import ChatFactory, RefusingTLSFactory
from twisted_chat.rules.admission import Admission
from twisted_chat.rules.connection import Rules
from twisted_chat.rules.limits import InputLimits
from twisted_chat.rules.login import Authenticator, LoginThrottle


class OptionError(SystemExit):
    """A bad option value: one line on stderr and exit status 1.

    twistd answers a ``usage.UsageError`` from a plugin by printing the whole option list
    before the message, which buries it; ``SystemExit`` with a message prints just the
    message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"twistd groupchat: error: {message} (see twistd groupchat --help)")
        self.message = message


def _positive(name: str, unit: str = "seconds"):  # type: ignore[no-untyped-def]
    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise OptionError(f"--{name} must be a number of {unit}, not {value!r}") from None
        if not number > 0 or number != number or number == float("inf"):
            raise OptionError(f"--{name} must be greater than 0")
        return number

    coerce.coerceDoc = f"{unit.capitalize()}, greater than 0."  # type: ignore[attr-defined]
    return coerce


def _between(
    name: str, kind: Callable[[str], float], low: float, high: float, unit: str, doc: str
) -> Callable[[str], Any]:
    """A coercer that accepts a number of ``unit`` from ``low`` to ``high``."""

    def coerce(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise OptionError(f"--{name} must be a number of {unit}, not {value!r}") from None
        if not low <= number <= high:
            raise OptionError(f"--{name} must be between {_num(low)} and {_num(high)} {unit}")
        return number

    coerce.coerceDoc = doc  # type: ignore[attr-defined]
    return coerce


def _num(value: float) -> str:
    """A number as a person writes it: 1048576, not 1.04858e+06."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _count(name: str, unit: str) -> Callable[[str], int]:
    """A whole number of ``unit``, at least 1."""

    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise OptionError(f"--{name} must be a whole number of {unit}, not {value!r}") from None
        if number < 1:
            raise OptionError(f"--{name} must be at least 1")
        return number

    coerce.coerceDoc = f"{unit.capitalize()}, at least 1."  # type: ignore[attr-defined]
    return coerce


_line_limit = _between("max-line", int, 64, 1_048_576, "bytes", "Bytes, 64 to 1048576.")
_flush_interval = _between("flush-interval", float, 0, 1, "seconds", "Seconds, 0 to 1; 0: no hold.")


def _size(value: str) -> int:
    """Bytes, with an optional K or M suffix (KiB, MiB)."""
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    try:
        number = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise OptionError(
            f"--send-queue must be a size such as 262144 or 256K, not {value!r}"
        ) from None
    if number < 4096:
        raise OptionError("--send-queue must be at least 4096 bytes")
    return number


_size.coerceDoc = "Bytes; K and M suffixes allowed; at least 4K."  # type: ignore[attr-defined]


def endpoint_description(port: str) -> str:
    """A bare port number means TCP on every IPv4 interface; anything else is passed on."""
    port = port.strip()
    if port.lstrip("-").isdigit():
        if not 0 <= int(port) <= 65535:
            raise OptionError(f"--port {port} is not a port number (0 to 65535)")
        return f"tcp:{port}"
    return port


# Twisted's default listen queue is 50.  While the server pauses accepting under a flood
# of refused connections, a full queue makes the kernel drop newcomers' SYNs, and they
# retry only after a second or more; with room for 1024 they wait for the pause instead.
# (Linux caps it at net.core.somaxconn, 4096 by default.)
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """The endpoint description with our listen queue, unless it names one itself."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


# Worker processes one server may run; a typo such as 1000 would start 1000 processes.
MAX_WORKERS = 256
HISTORY_FILE = "groupchat-history.sqlite3"
# Listening sockets the parent can pass to its workers (see docs/SCALING.md).
SHARED_KINDS = ("tcp", "tcp6", "ssl", "unix")


class Options(usage.Options, strcred.AuthOptionMixin):
    synopsis = "[options]"
    longdesc = (
        "Run the groupchat server: a line-based chat that people use from telnet, "
        "netcat or `python -m twisted_chat.client`."
    )
    optFlags: list[Any] = [
        [
            "nagle",
            None,
            "Let the kernel hold a small write to a client while its previous one is "
            "unacknowledged (Nagle's algorithm, as ngIRCd runs): far fewer packets and "
            "less CPU under heavy traffic, but a line may then wait up to a round trip "
            "(longer for clients that delay their acknowledgements). Without it every "
            "write leaves at once (TCP_NODELAY).",
        ],
        [
            "history-private",
            None,
            "Keep private messages in the history too (their senders and recipients can "
            "read them back with /history NICK); needs --auth, so that a nickname is a person.",
        ],
    ]
    optParameters: list[Any] = [
        [
            "port",
            "p",
            "9999",
            "Where to listen: a port number (all IPv4 interfaces) or a Twisted server "
            "endpoint description such as tcp:9999:interface=127.0.0.1, tcp6:9999 or "
            "unix:/tmp/chat.sock.",
        ],
        [
            "heartbeat-interval",
            None,
            10.0,
            "How often clients are asked to send a line, announced at connect.",
            _positive("heartbeat-interval"),
        ],
        [
            "heartbeat-timeout",
            None,
            30.0,
            "Silence after which a client is disconnected; must exceed the interval.",
            _positive("heartbeat-timeout"),
        ],
        [
            "sweep-interval",
            None,
            1.0,
            "How often silent clients are looked for; removal happens by timeout + this.",
            _positive("sweep-interval"),
        ],
        [
            "idle-warning",
            None,
            None,
            "Warn a silent client this long before the timeout, at most half the timeout "
            "[default: 5, or half the timeout if that is less].",
            _positive("idle-warning"),
        ],
        [
            "register-timeout",
            None,
            30.0,
            "Seconds from accept within which a connection must be ready to chat (TLS "
            "handshake done and, with --auth, logged in); slower ones are closed.",
            _positive("register-timeout"),
        ],
        [
            "max-line",
            None,
            2048,
            "Longest accepted line, in bytes; longer lines are refused.",
            _line_limit,
        ],
        [
            "rate",
            None,
            5.0,
            "Lines per second one connection may send (/ping excepted); faster lines are delayed.",
            _positive("rate", "lines per second"),
        ],
        [
            "burst",
            None,
            10.0,
            "Lines a connection may send at once before --rate applies.",
            _positive("burst", "lines"),
        ],
        [
            "byte-rate",
            None,
            16384.0,
            "Bytes per second one connection may send (bursts of 4 seconds' worth).",
            _positive("byte-rate", "bytes per second"),
        ],
        [
            "flood-timeout",
            None,
            60.0,
            "A connection held at the rate limit this long is disconnected as flooding.",
            _positive("flood-timeout"),
        ],
        [
            "max-clients",
            None,
            10000,
            "Connections accepted in total; more are refused with a one-line reason.",
            _count("max-clients", "connections"),
        ],
        [
            "max-per-address",
            None,
            20,
            "Connections accepted from one IP address; more are refused likewise.",
            _count("max-per-address", "connections"),
        ],
        [
            "connect-rate",
            None,
            10.0,
            "New connections per second accepted from one IP address (bursts of twice "
            "that); faster ones are refused with a one-line reason.",
            _positive("connect-rate", "connections per second"),
        ],
        [
            "send-queue",
            None,
            262144,
            "Output a client may leave unread (beyond the 64 KiB Twisted buffers itself) "
            "before it is disconnected as not reading.",
            _size,
        ],
        [
            "flush-interval",
            None,
            0.0,
            "Under sustained traffic, write to each client at most this often (seconds): "
            "fewer sends for more latency. Without it, output is written once per "
            "reactor iteration, for everything the iteration read.",
            _flush_interval,
        ],
        [
            "max-rooms-per-member",
            None,
            20,
            "Rooms one member may be in at once, #lobby included.",
            _count("max-rooms-per-member", "rooms"),
        ],
        [
            "max-rooms",
            None,
            1000,
            "Rooms that may exist at once, #lobby included; joining existing ones still works.",
            _count("max-rooms", "rooms"),
        ],
        [
            "summarize-above",
            None,
            100,
            "Rooms with more members than this announce joins, leaves and nickname changes "
            "in one summary line per --summary-interval, not one line per change.",
            _count("summarize-above", "members"),
        ],
        [
            "summary-interval",
            None,
            10.0,
            "How often a crowded room's summary of arrivals and departures is sent.",
            _positive("summary-interval"),
        ],
        [
            "port-file",
            None,
            None,
            "Once listening, write the bound address (for example tcp:127.0.0.1:9999, or "
            "ssl:... behind TLS) to this file, removed again at exit; useful with port 0.",
        ],
        [
            "web",
            None,
            None,
            "Also serve the browser client: a web page at / and its WebSocket at /ws, on "
            "this endpoint (tcp:8080, or ssl:8443:privateKey=KEY:certKey=CERT for https). "
            "Default: no web client.",
        ],
        [
            "web-port-file",
            None,
            None,
            "Like --port-file, for --web's address.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics and a health check at /healthz on this "
            "endpoint, for example tcp:9100:interface=127.0.0.1 (anyone who can connect "
            "can read them: keep it on loopback or behind a firewall). Default: none.",
        ],
        [
            "metrics-port-file",
            None,
            None,
            "Like --port-file, for --metrics' address.",
        ],
        [
            "history",
            None,
            None,
            "Keep what is said in rooms in this SQLite file (with its -wal and -shm files "
            "beside it) and show a joining member the room's last lines; none keeps "
            f"nothing; with --backplane, history is kept in Redis. [default: {HISTORY_FILE} "
            "in the working directory]",
        ],
        [
            "history-keep",
            None,
            5000,
            "Lines kept per room in the history file; older ones are deleted.",
            _count("history-keep", "lines"),
        ],
        [
            "history-days",
            None,
            None,
            "Delete history older than this many days (by default only --history-keep limits it)",
            _positive("history-days", "days"),
        ],
        [
            "history-replay",
            None,
            20,
            "How many of a room's last lines a joining member is shown (at most 200).",
            _between("history-replay", int, 0, 200, "lines", "Lines, 0 to 200."),
        ],
        [
            "backplane",
            None,
            None,
            "Join every groupchat server using this Redis as one network: "
            "redis://[:PASSWORD@]HOST:PORT[/DB], or rediss:// for TLS.",
        ],
        [
            "workers",
            None,
            1,
            "Run this many worker processes behind the one --port, each a node of the "
            "--backplane network (needed for more than 1); --max-clients is shared out "
            "among them.",
            _between("workers", int, 1, MAX_WORKERS, "processes", "Processes, 1 to 256."),
        ],
    ]

    # What parseOptions was given and where: a worker process parses the very same
    # arguments again, from the same folder (relative paths in them mean the same).
    argv: list[str] = []
    cwd = ""

    supportedInterfaces = [IUsernamePassword]

    def opt_version(self) -> None:
        """Print groupchat's version (and Twisted's and Python's) and exit."""
        import platform

        import twisted

        sys.stdout.write(
            f"groupchat {__version__} (Twisted {twisted.__version__}, "
            f"Python {platform.python_version()})\n"
        )
        raise SystemExit(0)

    def opt_web_origin(self, origin: str) -> None:
        """Let pages of this origin (scheme://host[:port], or * for any) open the web
        client's WebSocket; may be repeated. Default: only pages of the host the browser
        connected to."""
        from twisted_chat.doors.web import normalize_origin

        try:
            self.setdefault("web-origin", []).append(normalize_origin(origin))
        except ValueError as e:
            raise OptionError(f"--web-origin: {e}") from None

    def opt_operator(self, name: str) -> None:
        """A login name (of --auth) that may act as a server operator: moderate any room,
        /kill, /gban and /wall; may be repeated."""
        try:
            ChatService.login_nick(name)
        except ChatError as e:
            raise OptionError(f"--operator {name!r}: {e.message}") from None
        self.setdefault("operators", []).append(name)

    def opt_auth(self, description: str) -> None:
        """Require a login, checked by a Twisted strcred checker such as file:users.txt
        (one name:password line each); may be repeated (any checker may accept). The login
        name becomes the nickname. See --help-auth. Default: no logins."""
        path = description.partition(":")[2]
        if description.startswith("file:") and not os.path.isfile(path):
            raise OptionError(f"--auth {description!r}: no such file")
        try:
            super().opt_auth(description)
        except usage.UsageError as e:
            raise OptionError(f"--auth {description!r}: {e}") from None

    # usage.Options shows a method's docstring as written, wrapped lines' indentation too.
    for _method in (opt_web_origin, opt_operator, opt_auth):
        _method.__doc__ = " ".join((_method.__doc__ or "").split())
    del _method

    def parseOptions(self, options: Any = None) -> None:
        """An unknown option is one line too, not the whole option list before it."""
        self.argv = list(sys.argv[1:] if options is None else options)
        self.cwd = os.getcwd()
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise OptionError(str(e)) from None

    def postOptions(self) -> None:
        timeout = self["heartbeat-timeout"]
        if timeout <= self["heartbeat-interval"]:
            raise OptionError(
                "--heartbeat-timeout must be greater than --heartbeat-interval "
                f"(got {timeout:g} <= {self['heartbeat-interval']:g})"
            )
        if self["sweep-interval"] >= timeout:
            raise OptionError(
                f"--sweep-interval must be shorter than --heartbeat-timeout ({timeout:g} s), "
                f"or nobody is removed on time (got {self['sweep-interval']:g})"
            )
        if self["idle-warning"] is None:
            self["idle-warning"] = min(5.0, timeout / 2)
        elif self["idle-warning"] > timeout / 2:
            raise OptionError(
                f"--idle-warning must be at most half of --heartbeat-timeout ({timeout / 2:g} s), "
                f"not {self['idle-warning']:g}"
            )
        from twisted.internet import reactor

        if self["backplane"] is not None:
            from twisted_chat.backplane.redis import RedisAddress

            try:
                self["backplane"] = RedisAddress.parse(self["backplane"])
            except ValueError as e:
                raise OptionError(f"--backplane: {e}") from e
        self["doors"] = {}
        for door in FRONT_DOORS:
            value = self[door.option]
            self["doors"][door.option] = (
                (None, "") if value is None else parse_endpoint(door.option, value, reactor)
            )
        self["metrics-endpoint"] = (None, "")
        if self["metrics"] is not None:
            if self["workers"] > 1:
                raise OptionError(
                    "--metrics does not work with --workers yet (each worker would need "
                    "an endpoint of its own)"
                )
            self["metrics-endpoint"] = parse_endpoint("metrics", self["metrics"], reactor)
        self._check_history()
        if self.get("operators") and not self.get("credCheckers"):
            raise OptionError(
                "--operator needs --auth: operators are login names, so that a nickname "
                "alone never makes one"
            )
        if self["workers"] > 1:
            self._check_workers()

    def _check_history(self) -> None:
        """On by default, in a file of the working directory (made absolute: twistd may
        change directory before the server starts); ``none`` turns it off."""
        path = self["history"]
        networked = self["backplane"] is not None
        self["network-history"] = False
        if path in ("", "none"):
            path = None
        elif path is None:
            self["network-history"] = networked  # a capped stream per room in Redis
            path = None if networked else HISTORY_FILE
        elif networked:
            raise OptionError(
                "--history FILE does not work with --backplane: the nodes keep history in "
                "Redis; leave --history out (or --history none to keep nothing)"
            )
        self["history"] = None if path is None else os.path.abspath(path)
        if self["history-private"]:
            if networked:
                raise OptionError("--history-private does not work with --backplane yet")
            if self["history"] is None:
                raise OptionError("--history-private needs history (it is off: --history none)")
            if not self.get("credCheckers"):
                raise OptionError(
                    "--history-private needs --auth: without logins a nickname is not a "
                    "person, and whoever took a name next could read its private messages"
                )

    def _check_workers(self) -> None:
        """Several workers are several nodes: they need the backplane to be one chat, a
        port the parent can bind and hand over, and a share of --max-clients each."""
        workers = self["workers"]
        if self["backplane"] is None:
            raise usage.UsageError(
                f"--workers {workers} needs --backplane: each worker is a node of one "
                "network, and the nodes meet through Redis (for example "
                "--backplane redis://127.0.0.1:6379)"
            )
        for door in FRONT_DOORS:
            kind = self["doors"][door.option][1].split(":", 1)[0]
            if kind and kind not in SHARED_KINDS:
                raise usage.UsageError(
                    f"--workers needs a --{door.option} the parent can bind and hand to its "
                    f"workers (tcp:, tcp6:, ssl: or unix:), not {kind}:"
                )
        if self["max-clients"] < workers:
            raise usage.UsageError(
                f"--max-clients ({self['max-clients']}) is shared out among the workers: "
                f"it must be at least --workers ({workers})"
            )


def parse_endpoint(option: str, value: str, reactor: Any) -> tuple[Any, str]:
    """A front door's listening option as a server endpoint, and its description."""
    description = endpoint_description(value)
    if description.startswith("unix:"):
        path = description[5:].split(":", 1)[0]
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            raise OptionError(f"--{option} {value!r}: there is no folder {folder}")
    try:
        endpoint = endpoints.serverFromString(reactor, with_backlog(description))
    except TypeError as e:
        raise OptionError(
            f"--{option} {value!r} is not usable ({e}); IPv6 addresses need their "
            r"colons escaped, as in tcp6:9999:interface=\:\:1"
        ) from None
    except (ValueError, ImportError, OSError, KeyError) as e:
        raise OptionError(f"--{option} {value!r} is not usable: {e}") from None
    except IndexError:  # systemd: with no socket passed by systemd at that index
        raise OptionError(
            f"--{option} {value!r} is not usable: no such socket was passed to this process"
        ) from None
    number = getattr(endpoint, "_port", 0)
    if isinstance(number, int) and not 0 <= number <= 65535:
        raise OptionError(f"--{option} {value!r}: the port must be 0 to 65535")
    return endpoint, description


@dataclass(frozen=True)
class FrontDoor:
    """A way into the chat: the option that says where it listens, its factory, and the
    option naming the file its bound address is written to.

    Every door's factory takes the shared ``Rules`` (and the options), so it gets the
    same limits, logins and output coalescing as every other door.
    """

    option: str
    what: str
    factory: Callable[[Rules, Any], IProtocolFactory]
    port_file: str


def _web_site(rules: Rules, options: Any) -> IProtocolFactory:
    from twisted_chat.doors.web import WebSite  # twisted.web and wsproto: only when asked

    return WebSite(rules, options.get("web-origin") or ())


# Every front door, in one place: adding one is one entry here and options above.
FRONT_DOORS = (
    FrontDoor(
        "port",
        "the line protocol (telnet, nc, the client)",
        lambda rules, options: ChatFactory(rules),
        "port-file",
    ),
    FrontDoor("web", "the web client and its WebSocket", _web_site, "web-port-file"),
)


# Connections a TCP port accepts in one reactor turn.  Twisted starts at 100 and adds 20
# whenever a turn takes all it may; under a flood of connections that are refused at
# once, those turns ran for milliseconds while members' lines waited behind them.
MAX_ACCEPTS = 16


class BoundedAcceptPort(tcp.Port):
    """A TCP port that accepts at most ``MAX_ACCEPTS`` connections per reactor turn."""

    @property
    def numberAccepts(self) -> int:
        return self._accepts

    @numberAccepts.setter
    def numberAccepts(self, n: int) -> None:
        self._accepts = max(1, min(n, MAX_ACCEPTS))


def bound_accepts(port: IListeningPort) -> IListeningPort:
    """Make a listening ``tcp.Port`` a ``BoundedAcceptPort`` (anything else is left as is)."""
    if type(port) is tcp.Port:
        accepts = port.__dict__.pop("numberAccepts", MAX_ACCEPTS)
        port.__class__ = BoundedAcceptPort
        port.numberAccepts = accepts
    return port


def listen(endpoint: Any, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
    """``endpoint.listen(factory)``, except that over TLS refusals come before TLS state,
    and a TCP port accepts a bounded number of connections per reactor turn.

    Twisted's ``ssl:`` endpoint wraps the factory inside the reactor, where a refused
    connection still costs an OpenSSL connection and its teardown.  The same listening
    TCP port with our own wrapper (``RefusingTLSFactory``) asks the chat factory first.
    """
    if isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        d = defer.execute(
            endpoint._reactor.listenTCP,
            endpoint._port,
            _refusing_first(endpoint, factory),
            backlog=endpoint._backlog,
            interface=endpoint._interface,
        )
    else:
        d = cast(defer.Deferred[IListeningPort], endpoint.listen(factory))
    return d.addCallback(bound_accepts)


def adopt(
    reactor: Any, endpoint: Any, socket: tuple[int, int], factory: IProtocolFactory
) -> defer.Deferred[IListeningPort]:
    """A worker's ``listen``: accept on the socket ``(fd, family)`` its parent bound for
    ``endpoint``, with the same TLS wrapping and accept bound; ``fd`` is closed (the
    port holds its own copy)."""
    fd, family = socket

    def adopted() -> IListeningPort:
        try:
            port = reactor.adoptStreamPort(fd, family, _refusing_first(endpoint, factory))
        finally:
            os.close(fd)
        if type(port) is unix.Port:
            port.__class__ = SharedUNIXPort
        return cast(IListeningPort, port)

    return defer.execute(adopted).addCallback(bound_accepts)


def _refusing_first(endpoint: Any, factory: IProtocolFactory) -> IProtocolFactory:
    """The factory a port of ``endpoint`` accepts with: TLS refusals before TLS state."""
    if isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        return RefusingTLSFactory(endpoint._sslContextFactory, False, factory)
    return factory


class SharedUNIXPort(unix.Port):
    """A worker's copy of its parent's UNIX socket: closing it leaves the socket, and
    its file (which the parent made and removes), working for the other workers.

    Twisted's adopted ``unix.Port`` would ``shutdown()`` the socket, which stops it
    listening in every process, and unlink its path; an adopted ``tcp.Port`` does
    neither.
    """

    _shouldShutdown = False

    def connectionLost(self, reason: Any = None) -> None:
        tcp.Port.connectionLost(self, reason)  # unix.Port's own would unlink the path


class ListenerService(service.Service):
    """Listens on an endpoint (in a worker: accepts on the socket its parent bound); a
    failure to listen stops startup with a clear message."""

    log = Logger()

    def __init__(
        self,
        endpoint: Any,
        factory: IProtocolFactory,
        admission: Admission | None,
        description: str,
        port_file: str | None,
        reactor: IReactorCore,
        socket: tuple[int, int] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.admission = admission
        self.description = description
        self.port_file = port_file
        self.reactor = reactor
        self.socket = socket  # a worker's: (fd, family) of the socket its parent bound
        self.web = False  # the --web door: logged as the address to open in a browser
        self.metrics = False  # --metrics: logged as the address to scrape
        self.port: IListeningPort | None = None
        self._waiting: defer.Deferred[Any] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._waiting is None:  # run by ``twist``, which skips privilegedStartService
            self._listen()

    def _listen(self) -> None:
        synchronous: list[Any] = []
        starting = True

        def failed(failure: Any) -> None:
            if starting:
                synchronous.append(failure)
            else:
                self._failed(failure)

        if self.socket is None:
            self._waiting = listen(self.endpoint, self.factory)
        else:
            self._waiting = adopt(self.reactor, self.endpoint, self.socket, self.factory)
        self._waiting.addCallbacks(self._listening, failed)
        starting = False
        if synchronous:
            raise CannotListen(self.description, synchronous[0].value)

    def _listening(self, port: IListeningPort) -> None:
        # Everything loaded so far (Twisted, zope, our modules: some 45,000 objects) lives
        # as long as the process; a full garbage collection walking it paused the server
        # for 13 ms or more mid-broadcast.  Frozen, later collections only walk what came after.
        gc.freeze()
        self.port = port
        if self.admission is not None:
            self.admission.listening(port)  # so a flood of refusals can pause accepting
        address = port.getHost()
        where = describe_address(address)
        if self.description.startswith("ssl:"):
            where = "ssl:" + where.partition(":")[2]  # the same address, behind TLS
        if self.web and self.socket is None:
            self.log.info("groupchat web client at {url} (WebSocket: /ws)", url=self._url(where))
        elif self.metrics:
            url = self._url(where) + "metrics"
            self.log.info("groupchat metrics at {url} (health: /healthz)", url=url)
        elif self.socket is None:
            self.log.info("groupchat listening on {address}", address=where)
        else:
            self.log.info("accepting on {address}, bound by the parent", address=where)
        if self.port_file:
            tmp = f"{self.port_file}.tmp"
            with open(tmp, "w") as f:
                f.write(where + "\n")
            os.replace(tmp, self.port_file)

    def _url(self, where: str) -> str:
        """The http(s) address a browser or a scraper opens for the bound ``where``."""
        scheme = "https" if self.description.startswith("ssl:") else "http"
        host, _, number = where.partition(":")[2].rpartition(":")
        if host in ("0.0.0.0", "[::]"):  # every interface: this machine's own name works
            host = "localhost"
        return f"{scheme}://{host}:{number}/"

    def _failed(self, failure: Any) -> None:
        self.log.critical(
            "cannot listen on {description}: {error}",
            description=self.description,
            error=failure.getErrorMessage(),
        )
        self.reactor.callWhenRunning(_exit_with, self.reactor, 1)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.port_file and self.port is not None:
            with contextlib.suppress(OSError):  # it says where we listen: not any more
                os.remove(self.port_file)
        if self.port is not None:
            if self.admission is not None:
                self.admission.closing(self.port)
            port, self.port = self.port, None
            return port.stopListening()
        return None


class HeldListener(ListenerService):
    """``--workers``: binds a front door's socket for the worker processes, which accept
    on it; this process never does (it would need a whole node to serve them)."""

    def __init__(
        self, endpoint: Any, description: str, port_file: str | None, reactor: IReactorCore
    ) -> None:
        super().__init__(endpoint, _NoAccept(), None, description, port_file, reactor)

    def _listening(self, port: IListeningPort) -> None:
        # Called as the socket is bound, before the reactor could read it: not one
        # connection is accepted here.
        cast(tcp.Port, port).stopReading()
        super()._listening(port)

    def shared(self) -> tuple[int, int] | None:
        """The socket to pass to a worker, ``(fd, family)``, while listening."""
        port = cast(tcp.Port | None, self.port)
        return None if port is None else (port.fileno(), int(port.addressFamily))


class _NoAccept(protocol.Factory):
    """The factory of a held socket, which never accepts; if it did, it would close."""

    noisy = False

    def logPrefix(self) -> str:
        return "groupchat (for the workers)"

    def buildProtocol(self, addr: Any) -> None:
        return None


class CannotListen(SystemExit, Exception):
    """The listening port could not be opened: one line on stderr and exit status 1.

    Both kinds on purpose.  In the foreground twistd lets a ``SystemExit`` through, which
    prints its message and exits 1.  When daemonizing, twistd reports start-up failures
    to the waiting parent only for an ``Exception`` (and its parent, holding the write
    end of its own status pipe, would otherwise wait for ever); it reads at most 100
    bytes of that report, so the exception's own text is short and starts with the reason.
    """

    def __init__(self, description: str, error: BaseException) -> None:
        cause = getattr(error, "socketError", None) or error
        why = getattr(cause, "strerror", None) or str(error)
        short = f"{why}: cannot listen on {description}"  # the reason first: it fits
        super().__init__(short)
        self.code = f"groupchat: cannot listen on {description}: {why}"


# twistd's parent prints the report as ``ClassName: message``: let that read "groupchat:".
CannotListen.__module__ = "builtins"
CannotListen.__qualname__ = "groupchat"


def describe_address(address: Any) -> str:
    """An endpoint-like string for a bound address: tcp:HOST:PORT, tcp6:HOST:PORT, unix:PATH."""
    kind = type(address).__name__
    if kind == "IPv4Address":
        return f"tcp:{address.host}:{address.port}"
    if kind == "IPv6Address":
        return f"tcp6:[{address.host}]:{address.port}"
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return f"unix:{name}" if name is not None else str(address)


def _exit_with(reactor: IReactorCore, status: int) -> None:
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, status)
    reactor.stop()


def _warn_unusable_logins(authenticator: Authenticator) -> None:
    """Say at start which accounts can never log in, or never both at once.

    A login name becomes the nickname: one that breaks the nickname rules (``admin``,
    ``guest3``) is always refused, and two that look alike (``alice``, ``AIice``) hold
    one nickname between them.
    """
    log = Logger(namespace="twisted_chat.tap")
    seen: dict[str, str] = {}
    for name in authenticator.known_names():
        try:
            ChatService.login_nick(name)
        except ChatError as e:
            log.warn(
                "the account {name!r} can never log in: its name cannot be a nickname ({why})",
                name=name,
                why=e.message,
            )
            continue
        key = skeleton(name)
        if key in seen:
            log.warn(
                "the accounts {first!r} and {name!r} look alike: only one of them can be "
                "logged in at a time",
                first=seen[key],
                name=name,
            )
        else:
            seen[key] = name


def makeService(options: Options) -> service.MultiService:
    """One node (the chat, its backplane link, its listeners), or, with ``--workers N``,
    a parent that binds the ports and supervises N worker processes, each one node."""
    from twisted.internet import reactor

    if options["workers"] > 1:
        return _supervising(options, reactor)
    return build_node(options, reactor)


def _supervising(options: Options, reactor: Any) -> service.MultiService:
    from twisted_chat.workers.supervisor import Supervisor

    top = service.MultiService()
    held: dict[str, HeldListener] = {}
    for door in FRONT_DOORS:
        endpoint, description = options["doors"][door.option]
        if endpoint is None:
            continue
        held[door.option] = HeldListener(endpoint, description, options[door.port_file], reactor)
        held[door.option].web = door.option == "web"
        held[door.option].setServiceParent(top)

    def sockets() -> dict[str, tuple[int, int]]:
        shared = {option: listener.shared() for option, listener in held.items()}
        return {option: socket for option, socket in shared.items() if socket is not None}

    supervisor = Supervisor(
        options["workers"], options.argv, options.cwd, sockets, reactor,
        give_up=lambda: _exit_with(reactor, 1),
    )  # fmt: skip
    supervisor.setServiceParent(top)
    return top


class HistoryService(service.Service):
    """Opens the history store as the server starts (after twistd may have forked: its
    thread and SQLite connection must be the running process's) and closes it as the
    server stops, writing what is pending."""

    log = Logger(namespace="twisted_chat.history")

    def __init__(self, store: Any) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        self.store.open()  # checked at makeService: only a file changed since can fail
        rooms = self.store.rooms()
        self.log.info(
            "history: {path} ({rooms} room{s} with history; --history none keeps nothing)",
            path=self.store.path,
            rooms=rooms,
            s="" if rooms == 1 else "s",
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return cast(defer.Deferred[None], self.store.close())


def _open_history(options: Options, clock: IReactorTime, top: service.MultiService) -> Any:
    """The history store, open, as the core's ``IHistory``; a file that cannot be used
    is one line and exit status 1, before anything listens."""
    from twisted_chat.history import HistoryUnavailable, SQLiteHistory, StoredHistory

    store = SQLiteHistory(
        options["history"], clock, keep=options["history-keep"], days=options["history-days"]
    )
    try:
        store.check()
    except HistoryUnavailable as e:
        raise OptionError(f"--history: {e}") from None
    HistoryService(store).setServiceParent(top)  # first in: stopped after the chat
    return StoredHistory(store, options["history-replay"], private=options["history-private"])


def _keep_server_bans(options: Options, chat: ChatService, history: Any) -> None:
    """Server-wide bans survive a restart: in the history file, or, with history off, in
    a JSON file beside where it would be. Read now, before anything listens."""
    from twisted_chat.core.errors import HistoryUnavailable
    from twisted_chat.history.bans import BANS_FILE, BanFile

    bans = chat.moderator.server_bans
    store = getattr(history, "store", None)
    if store is None:
        keeper = BanFile(os.path.abspath(BANS_FILE))
        try:
            bans.load(keeper.load())
        except HistoryUnavailable as e:
            raise OptionError(str(e)) from None
        bans.save = keeper.save
    else:
        bans.load(store.bans)
        bans.save = store.save_bans


def build_node(
    options: Options, reactor: Any, sockets: dict[str, tuple[int, int]] | None = None
) -> service.MultiService:
    """The services of one node; a worker passes the ``sockets`` its parent bound, by
    option name, to accept on instead of listening."""
    clock: IReactorTime = reactor
    policy = HeartbeatPolicy(
        interval=options["heartbeat-interval"],
        timeout=options["heartbeat-timeout"],
        sweep=options["sweep-interval"],
        warning=options["idle-warning"],
    )
    limits = InputLimits(
        rate=options["rate"],
        burst=options["burst"],
        byte_rate=options["byte-rate"],
        byte_burst=max(4 * options["byte-rate"], 2 * (options["max-line"] + 2)),
        flood_timeout=options["flood-timeout"],
    )
    top = service.MultiService()
    link = None
    if options["backplane"] is not None:
        from twisted_chat.backplane.redis import RedisLink

        link = RedisLink(options["backplane"], clock, reactor)
    history: Any = None
    if options["history"] is not None:
        history = _open_history(options, clock, top)
    elif options["network-history"] and link is not None:
        from twisted_chat.backplane.history import NetworkHistory

        history = NetworkHistory(
            clock, options["history-replay"], options["history-keep"], options["history-days"]
        )
        history.reader = link
        link.node.history = history
        link.history_keep = options["history-keep"]
        link.history_days = options["history-days"]
    chat = ChatService(
        clock,
        policy,
        max_line=options["max-line"],
        limits=limits,
        summarize_above=options["summarize-above"],
        summary_interval=options["summary-interval"],
        max_rooms_per_member=options["max-rooms-per-member"],
        max_rooms=options["max-rooms"],
        network=None if link is None else link.node,
        history=history,
        operators=frozenset(options.get("operators") or ()),
    )
    chat.setServiceParent(top)
    if link is None:
        _keep_server_bans(options, chat, history)
    else:  # kept in Redis, for every node; read as each node joins the network
        chat.moderator.server_bans.save = link.save_server_bans
    rules = Rules(
        chat,
        clock,
        max_line=options["max-line"],
        send_queue=options["send-queue"],
        limits=limits,
        flush_interval=options["flush-interval"],
    )
    if link is not None:
        link.node.attach(chat, batching=rules.batcher)
        link.setServiceParent(top)
    checkers = options.get("credCheckers")
    if checkers:
        rules.authenticator = Authenticator(checkers, clock, throttle=LoginThrottle(key=skeleton))
        _warn_unusable_logins(rules.authenticator)
    rules.register_timeout = options["register-timeout"]
    rules.nodelay = not options["nagle"]
    admission = rules.admission
    admission.max_clients = options["max-clients"]
    admission.max_per_address = options["max-per-address"]
    admission.connect_rate = options["connect-rate"]
    admission.shared_port = sockets is not None  # a worker: others accept on its socket
    admission.server_bans = chat.moderator.server_bans
    endpoint, description = options.get("metrics-endpoint", (None, ""))
    if endpoint is not None:
        from twisted_chat.metrics import Metrics  # prometheus_client: only when asked

        metrics = Metrics(chat, rules, clock, link)
        metrics.setServiceParent(top)
        listener = ListenerService(
            endpoint, metrics.site, None, description, options["metrics-port-file"], reactor
        )
        listener.metrics = True
        listener.setServiceParent(top)
    for door in FRONT_DOORS:
        endpoint, description = options["doors"][door.option]
        if endpoint is None:
            continue
        socket = None if sockets is None else sockets[door.option]
        listener = ListenerService(
            endpoint,
            door.factory(rules, options),
            admission,
            description,
            options[door.port_file] if socket is None else None,
            reactor,
            socket,
        )
        listener.web = door.option == "web"
        listener.setServiceParent(top)
    return top
