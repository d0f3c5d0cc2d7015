"""The ``--web`` front door: one ``twisted.web`` site serving the browser client at ``/``
and its WebSocket at ``/ws``.

Every TCP connection to the site is counted by the shared ``Admission`` from accept, as
on the line door, and has the same deadline from accept (``--register-timeout``): an
HTTP connection that has not become a WebSocket by then is closed, and a WebSocket
keeps what was left of it for its login.  The site takes no request bodies, serves its
few files from memory with a strict Content-Security-Policy, and upgrades ``/ws`` only
for pages of an allowed origin (the same host, unless ``--web-origin`` says more).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import h11
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from wsproto import ConnectionType
from wsproto.events import AcceptConnection
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from twisted_chat.core.sanitize import clean_text
from twisted_chat.doors.line import Refusal
from twisted_chat.doors.websocket import ChatWebSocket
from twisted_chat.doors.wsframes import close_frame
from twisted_chat.rules.admission import LogThrottle
from twisted_chat.rules.connection import Rules, abort_transport

MAX_BODY = 1024  # the site takes no request bodies; a little is tolerated, then closed
CLIENT_PACKAGE = "twisted_chat.web"
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_REASONS = {426: b"Upgrade Required"}  # not in Twisted's table of reason phrases
_STATIC_HEADERS = (
    (b"server", b"groupchat"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-cache"),
)


def content_security_policy(host: str | None) -> bytes:
    """Only our own files, no inline script or style, no framing; the WebSocket of the
    host the page was loaded from (named too, for browsers whose ``'self'`` does not
    cover ``ws:``)."""
    sockets = ""
    if host and _HOST.fullmatch(host):
        sockets = f" ws://{host} wss://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ).encode()


def _origin_key(url: str, secure: bool | None = None) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or a Host header, default ports made explicit."""
    try:
        parts = urlsplit(url if "//" in url else f"//{url}")
        port = parts.port
    except ValueError:  # "http://[x", a port out of range: no origin we could match
        return None
    scheme = parts.scheme or ("https" if secure else "http")
    if parts.hostname is None:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def origin_allowed(
    origin: str | None, host: str | None, allowed: frozenset[str], secure: bool = False
) -> bool:
    """A page may open the WebSocket if it came from this host or an allowed origin.

    A request without ``Origin`` is not from a browser page (browsers always send it),
    so no page can be riding on a visitor's connection: allowed.
    """
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    if host is None:
        return False
    page = _origin_key(origin)
    here = _origin_key(host, secure)
    return page is not None and here is not None and page[1:] == here[1:]


def normalize_origin(value: str) -> str:
    """``--web-origin``'s value as browsers send it: ``scheme://host[:port]``, or ``*``."""
    value = value.strip().lower().rstrip("/")
    if value in ("*", "null"):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise ValueError(
            f"{value!r} is not an origin: write it as a browser sends it, "
            "like https://chat.example.com or http://localhost:8080 (or * for any)"
        )
    return value


def load_client() -> dict[bytes, tuple[bytes, bytes]]:
    """The browser client's files, by name: (content type, bytes), read once."""
    files: dict[bytes, tuple[bytes, bytes]] = {}
    for entry in importlib.resources.files(CLIENT_PACKAGE).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name.encode()] = (CONTENT_TYPES[suffix], entry.read_bytes())
    return files


class StaticFile(Resource):
    """One file from memory; GET and HEAD only (anything else: 405)."""

    isLeaf = True

    def __init__(self, content_type: bytes, body: bytes) -> None:
        super().__init__()
        self.content_type = content_type
        self.body = body

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        return self.body


class ChatSocket(Resource):
    """``/ws``: upgrades a GET from an allowed origin to a chat connection."""

    isLeaf = True
    log = Logger()

    def __init__(self, rules: Rules, origins: frozenset[str]) -> None:
        super().__init__()
        self.rules = rules
        self.origins = origins
        self._logged = LogThrottle()  # foreign origins, as refusals are logged

    def render_GET(self, request: Request) -> bytes | int:
        channel = request.channel
        assert isinstance(channel, WebChannel)
        if request.method != b"GET":  # a HEAD, which Resource serves with render_GET
            request.setHeader(b"allow", b"GET")
            return _plain(request, 405, "the WebSocket is opened with GET\n")
        origin = _header(request, b"origin")
        if not origin_allowed(origin, _header(request, b"host"), self.origins, request.isSecure()):
            self._log_foreign(channel, origin)
            return _plain(request, 403, "a page from another site may not open this chat\n")
        handshake = H11Handshake(ConnectionType.SERVER)
        headers = [
            (name, value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        try:
            handshake.initiate_upgrade_connection(headers, request.uri)
        except (RemoteProtocolError, h11.ProtocolError):  # h11's: no Host header, say
            request.setHeader(b"upgrade", b"websocket")
            return _plain(
                request,
                426,
                "this is the chat's WebSocket: open the page at / in a browser instead\n",
            )
        # No subprotocol and no extension: a compressed frame would cost inflating
        # before its size is known.
        response = bytes(handshake.send(AcceptConnection()))
        channel.upgrade(ChatWebSocket(self.rules, channel.accepted), response)
        return NOT_DONE_YET

    def _log_foreign(self, channel: WebChannel, origin: str | None) -> None:
        """Log a refused origin, at most once per address per ``REFUSAL_LOG_EVERY``: a
        page (or a script) retrying in a loop must not fill the disk."""
        more = self._logged.due(channel.address or channel.peer(), self.rules.clock.seconds())
        if more is None:
            return
        self.log.info(
            "WebSocket from {peer} refused: a page of {origin} may not connect "
            "(see --web-origin){more}",
            peer=channel.peer(),
            origin=clean_text(origin or "")[:100],
            more=LogThrottle.more(more),
        )


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code, _REASONS.get(code))
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return text.encode()


_NOT_FOUND = pages.notFound("Not Found", "There is nothing here.")


class Root(Resource):
    """The site's root: its files by name, ``/ws``, and a plain 404 for anything else."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        return _NOT_FOUND


class WebRequest(Request):
    """Every answer carries the security headers; a body is never kept."""

    _body = 0

    def render(self, resrc: IResource) -> None:
        if self._body > MAX_BODY:
            return  # answered 413 already, and closing: no second answer after it
        # Here rather than in process(), which sets its own Server header first.
        for name, value in _STATIC_HEADERS:
            self.setHeader(name, value)
        self.setHeader(b"content-security-policy", content_security_policy(_header(self, b"host")))
        if self.channel is not None:
            # One request per connection: a browser keeps idle connections open for
            # reuse, and each counts against --max-per-address until it closes, which
            # could leave no room for the page's own WebSocket.  (An upgrade writes its
            # own answer, and its connection becomes the WebSocket's.)
            self.setHeader(b"connection", b"close")
            self.channel.persistent = False
        super().render(resrc)

    def gotLength(self, length: int | None) -> None:
        super().gotLength(0)  # in memory, never a temporary file: we keep no body

    def handleContentChunk(self, data: bytes) -> None:
        self._body += len(data)
        if self._body <= MAX_BODY:
            super().handleContentChunk(data)
            return
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None and not getattr(transport, "disconnecting", False):
            transport.write(
                b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 33\r\nConnection: close\r\n\r\n"
                b"this site takes no request bodies"
            )
            transport.loseConnection()


class WebChannel(HTTPChannel):
    """An HTTP connection of the site, counted from accept until it ends, or until it
    becomes a WebSocket, whose ``Connection`` then holds the count and the deadline."""

    log = Logger()
    site: WebSite
    # A browser sends some 15 headers; Twisted allows 500, each kept as objects while
    # the head is unfinished (83 KiB a connection, measured, for 500 tiny ones).
    maxHeaders = 64
    address: str | None = None  # the admission key, while this channel holds it
    accepted = 0.0
    socket: ChatWebSocket | None = None  # once upgraded: who its bytes are for
    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        clock = site.rules.clock
        self.accepted = clock.seconds()
        self._deadline = clock.callLater(site.rules.register_timeout, self._too_slow)

    def peer(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        host = getattr(address, "host", None)
        return f"{host}:{getattr(address, 'port', '')}" if host is not None else "unix socket"

    def _too_slow(self) -> None:
        """Past the deadline from accept and still plain HTTP: a page would have opened
        its WebSocket long ago; a dribbling request or an idle keep-alive goes."""
        self._deadline = None
        if self.transport is not None:
            abort_transport(self.transport)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        socket = self.socket
        if socket is not None:
            socket.dataReceived(data)
        else:
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        # Frames a client sent right behind its upgrade request, in the same read: the
        # request was just answered, and the rest of that read is the WebSocket's.
        socket = self.socket
        if socket is not None:
            socket.dataReceived(data)
        else:
            super().rawDataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.rules.tally.closed("web")
        socket = self.socket
        if socket is not None:
            socket.connectionLost(reason)
            return
        self._stop_deadline()
        if self.address is not None:
            self.site.rules.admission.released(self.address)
            self.address = None
        super().connectionLost(reason)

    def upgrade(self, socket: ChatWebSocket, response: bytes) -> None:
        """Hand the connection to ``socket``: from now on its bytes are the WebSocket's.

        The channel stays the transport's protocol and passes on what it is given
        (Twisted's own WebSocket resource replaces its methods instead; ``HTTPChannel``
        has no public way yet).  The channel's HTTP timeout, deadline and flow control
        stop here; the socket's own take over, and so does the admission count.
        """
        transport = self.transport
        assert transport is not None
        self._stop_deadline()
        self.setTimeout(None)
        IConsumer(transport).unregisterProducer()
        self.requests.clear()  # the upgrade request: never finished, not kept either
        self.socket = socket
        socket.address, self.address = self.address, None
        transport.write(response)
        socket.makeConnection(transport)
        IPushProducer(transport).resumeProducing()  # in case HTTP had paused reading


class WebRefusal(Refusal):
    """A refused connection to the site, told why in a way its page can see.

    A browser shows a page nothing of a refused WebSocket's HTTP answer, so a WebSocket
    request is read (its head only, at most ``MAX_REFUSED_HEAD`` bytes, within the hold)
    and answered with the upgrade and at once a close frame, code 1013 ("try again
    later"), whose reason is the refusal; anything else gets a 503 saying it.  Silent
    refusals (told a moment ago, too many held, over TLS) read nothing, as on any door.
    """

    _head: bytearray | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        if not (self.tell and self.hold) or ISSLTransport.providedBy(self.transport):
            super().connectionMade()
            return
        self._head = bytearray()
        self._hold_or_close()

    def dataReceived(self, data: bytes) -> None:
        head = self._head
        if head is None or self.transport is None:
            return
        head += data
        if b"\r\n\r\n" not in head and len(head) < MAX_REFUSED_HEAD:
            return
        self._head = None
        IPushProducer(self.transport).pauseProducing()  # read no more of it
        key = _websocket_key(bytes(head))
        self.transport.write(self.answer() if key is None else self.closing(key))

    def answer(self) -> bytes:
        body = f"refused: {self.reason}\n".encode()
        return (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        ) + body

    def closing(self, key: bytes) -> bytes:
        """The upgrade, then a close frame with the refusal as its reason."""
        accept = base64.b64encode(hashlib.sha1(key + _WEBSOCKET_GUID).digest())
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            + close_frame(TRY_AGAIN_LATER, f"refused: {self.reason}")
        )  # fmt: skip


MAX_REFUSED_HEAD = 8192
TRY_AGAIN_LATER = 1013
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


def _websocket_key(head: bytes) -> bytes | None:
    """The Sec-WebSocket-Key of a WebSocket upgrade request's head, else None."""
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    if not lines[0].startswith(b"GET "):
        return None
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    key = fields.get(b"sec-websocket-key", b"")
    if fields.get(b"upgrade", b"").lower() != b"websocket" or not 16 <= len(key) <= 64:
        return None
    return key


class WebSite(Site):
    """The ``--web`` door's factory: admission first, as on every door."""

    protocol = WebChannel  # type: ignore[assignment]
    requestFactory = WebRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, rules: Rules, origins: Iterable[str] = ()) -> None:
        self.rules = rules
        root = Root()
        for name, (content_type, body) in load_client().items():
            root.putChild(name, StaticFile(content_type, body))
        index = root.children.get(b"index.html")
        root.putChild(b"", index if index is not None else _NOT_FOUND)
        root.putChild(b"ws", ChatSocket(rules, frozenset(origins)))
        super().__init__(root, timeout=rules.register_timeout, reactor=rules.clock)

    def logPrefix(self) -> str:
        return "groupchat-web"

    def log(self, request: Any) -> None:
        """No access log: the chat logs each WebSocket as it logs every connection."""

    def buildProtocol(self, addr: Any) -> Any:
        host, refused = self.rules.admission.admit(addr)
        if refused is not None:
            if not (refused.tell or refused.hold):
                return None
            return WebRefusal(refused, self.rules.admission, self.rules.clock)
        self.rules.tally.opened("web")
        channel = super().buildProtocol(addr)
        channel.address = host
        return channel
