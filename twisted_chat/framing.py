"""Byte-level input handling, kept free of Twisted so it can be tested on any bytes.

``TelnetFilter`` removes telnet negotiation (IAC sequences) across read boundaries;
``LineFramer`` splits on ``\\n`` (a trailing ``\\r`` is dropped, so both ``nc`` and
``telnet`` work) and never buffers more than the line limit: an over-long line is
reported once and skipped up to its end.
"""

from __future__ import annotations

IAC = 255
SE, SB = 240, 250
WILL, WONT, DO, DONT = 251, 252, 253, 254


class TelnetFilter:
    """Strips telnet commands; collects refusals to send back for options asked of us."""

    _DATA, _IAC, _OPTION, _SUB, _SUB_IAC = range(5)
    __slots__ = ("_state", "_verb", "replies")

    def __init__(self) -> None:
        self._state = self._DATA
        self._verb = 0
        self.replies = bytearray()

    def feed(self, data: bytes) -> bytes:
        if self._state == self._DATA and IAC not in data:
            return data
        out = bytearray()
        state = self._state
        for byte in data:
            if state == self._DATA:
                if byte == IAC:
                    state = self._IAC
                else:
                    out.append(byte)
            elif state == self._IAC:
                if byte == IAC:
                    state = self._DATA  # an escaped 0xFF: never valid UTF-8 text, drop it
                elif byte in (WILL, WONT, DO, DONT):
                    self._verb = byte
                    state = self._OPTION
                elif byte == SB:
                    state = self._SUB
                else:
                    state = self._DATA  # two-byte command (NOP, AYT, GA, ...)
            elif state == self._OPTION:
                # We support no option: refuse whatever the client offers or asks.
                if self._verb == DO:
                    self.replies += bytes((IAC, WONT, byte))
                elif self._verb == WILL:
                    self.replies += bytes((IAC, DONT, byte))
                state = self._DATA
            elif state == self._SUB:
                if byte == IAC:
                    state = self._SUB_IAC
            elif state == self._SUB_IAC:
                state = self._DATA if byte == SE else self._SUB
        self._state = state
        return bytes(out)


class LineTooLong:
    """Marker yielded once per over-long line, in place of the line."""

    __slots__ = ()


TOO_LONG = LineTooLong()


class LineFramer:
    __slots__ = ("_buffer", "_skipping", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = b""
        self._skipping = False

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
