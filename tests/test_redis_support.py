"""The Redis that backplane tests will use: started on its own port, stopped by its PID."""

from __future__ import annotations

from tests.redis_support import RedisProcess, stop


def test_a_private_redis_answers_and_keeps_nothing(redis_server: RedisProcess):
    assert redis_server.command("PING") == b"+PONG\r\n"
    assert redis_server.command("SET", "k", "v", "NX", "PX", "1000") == b"+OK\r\n"
    assert redis_server.command("SET", "k", "w", "NX", "PX", "1000") == b"$-1\r\n"  # held
    assert redis_server.command("CONFIG", "GET", "save") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    stop(redis_server)
    assert redis_server.proc.returncode is not None  # gone, by its own PID
