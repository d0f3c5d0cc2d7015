"""A small blocking WebSocket client for end-to-end tests (wsproto on a plain socket).

Like ``e2e_support.ChatClient``, every wait is bounded; each server message is one event,
decoded from JSON unless the session asked for text.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.e2e_support import EXPECT_TIMEOUT, HOST, recv_by


class WsClient:
    def __init__(
        self,
        port: int,
        label: str,
        origin: str | None = "same",
        tls: ssl.SSLContext | None = None,
        timeout: float = EXPECT_TIMEOUT,
    ) -> None:
        self.label = label
        sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock: socket.socket = tls.wrap_socket(sock, server_hostname=HOST) if tls else sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Any] = []  # every event received, in order
        self.messages: list[str] = []  # the text messages among them
        self.status: int | None = None  # 101, or the HTTP status of a refusal
        self.closed: CloseConnection | None = None
        self.eof = False
        self._used: set[int] = set()
        host = f"{HOST}:{port}"
        scheme = "https" if tls else "http"
        headers = []
        if origin is not None:
            headers.append(
                (b"origin", (f"{scheme}://{host}" if origin == "same" else origin).encode())
            )
        self.sock.sendall(self.ws.send(Request(host=host, target="/ws", extra_headers=headers)))
        deadline = time.monotonic() + timeout
        while self.status is None and self._read(deadline):
            pass

    def _read(self, deadline: float) -> bool:
        if self.eof:
            return False
        try:
            data = recv_by(self.sock, deadline)
        except ssl.SSLError:  # a TLS record cut short by the deadline
            return False
        if data is None:
            return False
        if not data:
            self.eof = True
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        for event in self.ws.events():
            self.events.append(event)
            if isinstance(event, AcceptConnection):
                self.status = 101
            elif isinstance(event, RejectConnection):
                self.status = event.status_code
            elif isinstance(event, TextMessage):
                self.messages.append(event.data)
            elif isinstance(event, CloseConnection) and self.closed is None:
                self.closed = event  # the server's; wsproto adds a 1006 at the end
        return not self.eof

    @property
    def accepted(self) -> bool:
        return self.status == 101

    def rejection_body(self) -> bytes:
        return b"".join(bytes(e.data) for e in self.events if isinstance(e, RejectData))

    def say(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(text)))

    def expect(self, pred: Any, timeout: float = EXPECT_TIMEOUT) -> dict[str, Any]:
        """The first not-yet-matched JSON event for which ``pred(event)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, text in enumerate(self.messages):
                if i in self._used:
                    continue
                event = json.loads(text)
                if pred(event):
                    self._used.add(i)
                    return event
            if not self._read(deadline):
                shown = "\n  ".join(self.messages)
                raise AssertionError(
                    f"{self.label}: no event matching within {timeout} s "
                    f"(eof={self.eof}); received:\n  {shown}"
                )

    def expect_type(
        self, kind: str, timeout: float = EXPECT_TIMEOUT, **fields: Any
    ) -> dict[str, Any]:
        return self.expect(
            lambda e: e["type"] == kind and all(e.get(k) == v for k, v in fields.items()),
            timeout,
        )

    def expect_closed(self, timeout: float = EXPECT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._read(deadline) and not self.eof:
                raise AssertionError(f"{self.label}: still open after {timeout} s")

    def close(self, code: int = 1000) -> None:
        """What a closing tab does: a close frame, then the socket goes."""
        with contextlib.suppress(OSError):
            self.sock.sendall(self.ws.send(CloseConnection(code=code)))
        self.sock.close()
