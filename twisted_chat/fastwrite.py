"""Writing to a plain TCP socket at once, without a round trip through the reactor.

Twisted's ``write`` appends to the transport's buffer and registers the socket for
writing; a later reactor turn sends and unregisters it: two ``epoll_ctl`` calls and a
``doWrite`` per write.  A broadcast writes to every member at the same moment, so in the
fan-out profile that bookkeeping cost more than the ``send()`` calls themselves.  When the
transport has nothing buffered, sending straight away is what ``doWrite`` would do a
moment later; whatever the kernel does not take goes through ``write`` as before, so
ordering, back-pressure and error handling stay Twisted's.

It reads attributes of ``twisted.internet.tcp.Connection`` that are not public API, so it
applies only where they are all present and otherwise leaves the transport alone.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger

_NEEDED = ("socket", "dataBuffer", "offset", "_tempDataBuffer", "_writeDisconnected", "TLS")
_log = Logger()
_warned: list[str] = []


def missing(transport: object) -> list[str]:
    """What ``write_now`` reads that ``transport`` lacks (tests/test_fastwrite.py checks
    the installed Twisted against it)."""
    return [name for name in _NEEDED if not hasattr(transport, name)]


def can_write_directly(transport: object) -> bool:
    """Plain TCP (not TLS, not UNIX sockets with their descriptor passing)."""
    if type(transport) is not tcp.Server:
        return False
    gone = missing(transport)
    if gone and not _warned:
        # Still correct (every write goes through Twisted), but the fan-out fast path
        # is off: say so once rather than be silently slower.
        _warned.extend(gone)
        _log.warn(
            "this Twisted's TCP transport lacks {missing}: writing without the fast path",
            missing=", ".join(gone),
        )
    return not gone


def write_now(transport: Any, data: bytes) -> OSError | None:
    """Send ``data`` now if nothing is queued before it; else queue it behind the rest.

    Returns the error a failed ``send()`` raised.  The kernel reports a socket error once:
    having taken it here, Twisted would only see the end of the stream and call it a clean
    close, so the caller keeps it to describe the loss itself.
    """
    if (
        transport._tempDataBuffer
        or transport.offset != len(transport.dataBuffer)
        or transport.TLS
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
    ):
        transport.write(data)
        return None
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError as e:
        transport.write(data)  # Twisted notices the dead socket on its own and closes it
        return e
    if sent < len(data):
        transport.write(data[sent:])
    return None
