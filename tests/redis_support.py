"""A real ``redis-server`` for tests: its own free loopback port and temporary folder,
stopped by its PID.

Redis comes from Debian's ``redis-server`` package, which ``.ci/run`` installs.  With
``CI`` set a test that needs it fails when it is missing; elsewhere it is skipped with a
line saying what to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e_support import ServerFactory, ServerProcess, wait_until

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
JOIN_TIMEOUT = 10.0  # a node joining the network after it listens
STOP_TIMEOUT = 5.0


@dataclass
class RedisProcess:
    proc: subprocess.Popen[bytes]
    port: int
    folder: Path

    def command(self, *words: str, timeout: float = 5.0) -> bytes:
        """One command over a fresh connection, the raw reply (RESP) returned."""
        parts = [f"*{len(words)}\r\n".encode()]
        for word in words:
            data = word.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection((HOST, self.port), timeout=timeout) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(65536)


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        why = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _answers(redis: RedisProcess) -> bool:
    if redis.proc.poll() is not None:
        raise RuntimeError(f"redis-server exited with {redis.proc.returncode}")
    try:
        return redis.command("PING", timeout=0.5).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(folder: Path, port: int | None = None, log_name: str = "redis.log") -> RedisProcess:
    """A redis-server with no persistence in ``folder``, on ``port`` (a free one by
    default), answering; stop it with ``stop``."""
    binary = redis_binary()
    port = _free_port() if port is None else port
    argv = [binary, "--port", str(port), "--bind", HOST, "--dir", str(folder)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"]
    with open(folder / log_name, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    redis = RedisProcess(proc, port, folder)
    try:
        if not wait_until(lambda: _answers(redis), START_TIMEOUT):
            raise RuntimeError((folder / log_name).read_text(errors="replace")[-2000:])
    except BaseException:
        stop(redis)
        raise
    return redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh redis-server with no persistence, for one test."""
    redis = start_redis(tmp_path)
    try:
        yield redis
    finally:
        stop(redis)


def stop(redis: RedisProcess) -> None:
    """SIGTERM by its PID, then SIGKILL if it has not gone within ``STOP_TIMEOUT``."""
    if redis.proc.poll() is None:
        os.kill(redis.proc.pid, signal.SIGTERM)
        try:
            redis.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(redis.proc.pid, signal.SIGKILL)
            redis.proc.wait(STOP_TIMEOUT)


def start_node(start_server: ServerFactory, redis: RedisProcess, *options: str) -> ServerProcess:
    """A groupchat node on ``redis`` with ``options``, returned once it has joined the
    network (its log says so)."""
    node = start_server("--backplane", f"redis://{HOST}:{redis.port}", *options)
    joined = wait_until(lambda: "joined the network" in node.log(), JOIN_TIMEOUT)
    assert joined, f"node never joined the network:\n{node.log()}"
    return node
