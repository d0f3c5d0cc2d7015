"""Byte-level input handling, kept free of Twisted so it can be tested on any bytes.

``TelnetFilter`` removes telnet negotiation (IAC sequences) across read boundaries;
``LineFramer`` splits on ``\\n`` (a trailing ``\\r`` is dropped, so both ``nc`` and
``telnet`` work) and never buffers more than the line limit: an over-long line is
reported once and skipped up to its end.
"""

from __future__ import annotations

from twisted_chat.rules.limits import TOO_LONG, LineTooLong

IAC = 255
SE, SB = 240, 250
WILL, WONT, DO, DONT = 251, 252, 253, 254
TIMING_MARK = 6
_IAC_BYTE = b"\xff"
SUB_MAX = 512  # we accept no option, so a well-behaved client sends no subnegotiation
# Telnet commands a connection may send: bursts of COMMAND_BURST, then COMMAND_RATE a
# second.  A telnet client sends a handful (and one answer per timing mark we ask for);
# the limit bounds the Python work per byte a hostile peer can make us do.
COMMAND_RATE = 20.0
COMMAND_BURST = 200.0


class TelnetError(Exception):
    """Negotiation no telnet client sends: the connection is ended with this reason."""


class TelnetFilter:
    """Strips telnet commands; collects refusals to send back for options asked of us.

    Each option is answered at most once per connection, so a peer repeating ``DO x``
    cannot make us write more than it sends, and plain data between commands is copied
    in slices, never byte by byte.  A subnegotiation longer than ``SUB_MAX``, or more
    commands than ``COMMAND_BURST`` at once or ``COMMAND_RATE`` a second (counted in C
    before any is parsed), raises ``TelnetError``.  ``marks`` counts the peer's answers
    to ``DO TIMING-MARK``.  ``now`` is the time, for the command rate.
    """

    _DATA, _IAC, _OPTION, _SUB, _SUB_IAC = range(5)
    __slots__ = (
        "_allowance",
        "_answered",
        "_stamp",
        "_state",
        "_sub",
        "_verb",
        "marks",
        "replies",
        "seen",
    )

    def __init__(self) -> None:
        self._state = self._DATA
        self._verb = 0
        self._sub = 0
        self._answered: set[int] | None = None
        self.marks = 0
        self.replies = bytearray()
        self.seen = False  # any telnet command at all: the peer is a telnet client
        self._allowance = COMMAND_BURST
        self._stamp: float | None = None

    def feed(self, data: bytes, now: float = 0.0) -> bytes:
        state = self._state
        if state == self._DATA and _IAC_BYTE not in data:
            return data
        self.seen = True
        if self._stamp is not None and now > self._stamp:
            self._allowance = min(
                COMMAND_BURST, self._allowance + (now - self._stamp) * COMMAND_RATE
            )
        self._stamp = now
        self._allowance -= data.count(_IAC_BYTE)
        if self._allowance < 0:
            raise TelnetError(
                f"telnet negotiation flood: more than {COMMAND_BURST:g} commands at once "
                f"or {COMMAND_RATE:g} a second"
            )
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            if state == self._DATA:
                j = data.find(_IAC_BYTE, i)
                if j < 0:
                    out.append(data[i:])
                    break
                if j > i:
                    out.append(data[i:j])
                i, state = j + 1, self._IAC
                continue
            if state == self._SUB:
                j = data.find(_IAC_BYTE, i)
                end = n if j < 0 else j
                self._sub += end - i
                if self._sub > SUB_MAX:
                    self._state = state
                    raise TelnetError(f"telnet subnegotiation longer than {SUB_MAX} bytes")
                i = end
                if j >= 0:
                    i, state = j + 1, self._SUB_IAC
                continue
            byte = data[i]
            i += 1
            if state == self._IAC:
                if byte in (WILL, WONT, DO, DONT):
                    self._verb, state = byte, self._OPTION
                elif byte == SB:
                    self._sub, state = 0, self._SUB
                else:
                    # Two-byte commands (NOP, AYT, GA, ...) and an escaped 0xFF, which is
                    # never valid UTF-8 text: dropped.
                    state = self._DATA
            elif state == self._OPTION:
                self._option(self._verb, byte)
                state = self._DATA
            else:  # _SUB_IAC: SE ends it; IAC IAC is an escaped 0xFF inside it
                state = self._DATA if byte == SE else self._SUB
        self._state = state
        return b"".join(out)

    def _option(self, verb: int, option: int) -> None:
        if option == TIMING_MARK and verb in (WILL, WONT):
            self.marks += 1  # an answer to our DO TIMING-MARK: never answered back
            return
        if verb not in (DO, WILL):
            return
        answered = self._answered
        if answered is None:
            answered = self._answered = set()
        key = verb << 8 | option
        if key in answered:
            return
        answered.add(key)
        # We support no option: refuse whatever the client offers or asks, once.
        self.replies += bytes((IAC, WONT if verb == DO else DONT, option))


class LineFramer:
    """Splits lines; ``endings`` records which line endings were seen (CRLF, LF)."""

    CRLF, LF = 1, 2
    __slots__ = ("_buffer", "_skipping", "endings", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = b""
        self._skipping = False
        self.endings = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        """Each complete line (without its ending), or ``TOO_LONG`` for one too long."""
        out: list[bytes | LineTooLong] = []
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                line = buffer[start:end]
                if line.endswith(b"\r"):
                    line = line[:-1]
                    self.endings |= self.CRLF
                else:
                    self.endings |= self.LF
                if len(line) > self.max_line:
                    out.append(TOO_LONG)
                else:
                    out.append(line)
            start = end + 1
        rest = buffer[start:]
        if self._skipping:
            rest = b""
        elif len(rest) > self.max_line + 1:  # +1: room for a '\r' before the '\n'
            self._skipping = True
            rest = b""
            out.append(TOO_LONG)
        self._buffer = rest
        return out
