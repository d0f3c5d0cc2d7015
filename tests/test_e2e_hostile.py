"""Hostile peers against the real server over real sockets: what each costs the others.

The transport matters here (raw telnet bytes over TCP, a TLS port that never hears a
handshake), so these run ``twistd -n groupchat`` as a subprocess.  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path

from tests.e2e_support import HOST, ChatClient, ClientFactory, ServerFactory, wait_until


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _round_trip(client: ChatClient) -> float:
    start = time.monotonic()
    client.barrier()
    return time.monotonic() - start


def _raw(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((HOST, port))
    return sock


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError(f"still open after {timeout} s; got {bytes(data[-300:])!r}")


def test_telnet_negotiation_flood_from_a_non_reader_is_bounded_and_removed(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server()
    bob = connect(server, "bob")
    quiet = sorted(_round_trip(bob) for _ in range(5))[2]
    rss_before = _rss_kib(server.pid)

    # Twenty peers that never read, each looping IAC DO x as fast as the socket takes it.
    attackers = [_raw(server.port, rcvbuf=4096) for _ in range(20)]
    chunk = b"\xff\xfd\x01" * 10_000
    for sock in attackers:
        sock.settimeout(1.0)
        with contextlib.suppress(OSError):  # the server may cut it off mid-write
            sock.sendall(chunk)
    trips = [_round_trip(bob) for _ in range(5)]  # within bob's free heartbeats
    rss_after = _rss_kib(server.pid)

    for sock in attackers:
        received = _read_until_closed(sock, timeout=5.0)
        assert received.count(b"\xff\xfc\x01") <= 1  # never more answers than one
        assert b"telnet negotiation flood" in received or b"\xff" not in received
    # Cut off at their first burst, before anything was parsed: nothing grew.
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
    trips.sort()
    assert trips[len(trips) // 2] < max(0.05, 5 * quiet), (quiet, trips)
    assert "telnet negotiation flood" in server.log()


def test_an_endless_subnegotiation_is_cut_off_at_once(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server()
    bob = connect(server, "bob")
    seated = connect(server, "seated")  # a member when it starts
    seated.send(b"\xff\xfa\x18" + b"x" * 100_000)
    seated.expect_closed()
    assert "*** Disconnected: telnet subnegotiation longer than 512 bytes" in seated.lines_so_far
    bob.expect(f"{seated.nick} lost connection (telnet subnegotiation longer than 512 bytes)")

    early = _raw(server.port)  # at once: it is never seated, so nobody hears of it
    early.sendall(b"\xff\xfa\x18" + b"x" * 100_000)
    received = _read_until_closed(early, timeout=5.0)
    assert received == b"*** Disconnected: telnet subnegotiation longer than 512 bytes\r\n"
    bob.barrier()
    assert bob.count("joined") == 2, bob.lines_so_far  # its own and the seated one's


def test_silent_connections_to_a_tls_port_are_closed_by_the_deadline(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    from tests.test_client_e2e import _make_certificate

    key, cert, _ = _make_certificate(tmp_path)
    server = start_server(
        "--register-timeout", "1", "--max-per-address", "3",
        port=f"ssl:0:privateKey={key}:certKey={cert}:interface={HOST}",
    )  # fmt: skip
    silent = [_raw(server.port) for _ in range(3)]
    # Over the per-address limit: held on plain TCP with nothing said (a reason would need
    # a TLS handshake), and closed all the same.
    assert _read_until_closed(_raw(server.port), timeout=5.0) == b""
    for sock in silent:
        assert _read_until_closed(sock, timeout=5.0) == b""  # closed, nothing said

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(_raw(server.port), server_hostname="localhost") as tls:
        tls.settimeout(5.0)
        assert b"Welcome to groupchat" in tls.recv(4096)
    log = server.log()
    assert log.count("before login: no TLS handshake within 1 s") == 3, log


def test_reconnecting_in_a_loop_to_a_tls_port_is_refused_cleanly(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    from tests.test_client_e2e import _make_certificate

    key, cert, _ = _make_certificate(tmp_path)
    server = start_server(
        "--connect-rate", "1",
        port=f"ssl:0:privateKey={key}:certKey={cert}:interface={HOST}",
    )  # fmt: skip
    deadline = time.monotonic() + 1.6  # past the second in which refusals say why
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            sock = _raw(server.port)
            with contextlib.suppress(AssertionError):  # an accepted one is left open
                _read_until_closed(sock, timeout=0.05)
            sock.close()
    # Bounded: any error the last refusals cause would be logged within this.
    assert not wait_until(lambda: "Unhandled" in server.log(), 0.5), server.log()[-3000:]
    log = server.log()
    assert "too many new connections from your address" in log
    assert "Unhandled" not in log and "Traceback" not in log, log[-3000:]


def test_a_client_reconnecting_whenever_it_is_closed_is_held_at_each_refusal(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server("--max-per-address", "1")
    member = connect(server, "alice")
    began = time.monotonic()
    answers = []
    while time.monotonic() - began < 3.0:  # the reconnect loop of a password guesser
        with _raw(server.port) as sock:
            answers.append(_read_until_closed(sock, timeout=5.0))
    took = time.monotonic() - began
    assert len(answers) <= 2 and took >= 2 * 1.9, (answers, took)  # one per two seconds
    assert answers[0] == b"!!! refused: too many connections from your address (at most 1)\r\n"
    member.barrier()  # unharmed
