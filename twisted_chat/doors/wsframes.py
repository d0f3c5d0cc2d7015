"""WebSocket frames (RFC 6455, section 5), kept free of Twisted so it can be tested on any
bytes: reading what a client sends, and writing what a server sends.

Reading is ours rather than wsproto's: wsproto spent about 7 us of Python on each small
masked frame (unmasking byte by byte among it), the largest cost of a message from a
browser, and kept some 1.6 KB of objects per connection.  A data frame's payload is
handed on as it arrives, never held whole, so its size is for the caller to bound.
"""

from __future__ import annotations

import codecs
import struct
from typing import Final

# Opcodes (section 5.2); FAIL is ours: the frames broke the protocol.
CONTINUATION, TEXT, BINARY = 0x0, 0x1, 0x2
CLOSE, PING, PONG = 0x8, 0x9, 0xA
FAIL: Final = -1

PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009
NO_CODE = 1005  # a close frame without a code (section 7.1.5); never sent
MAX_LENGTH = 1 << 62  # a length beyond any real frame: the 64-bit form's top bit is invalid


# What the reader hands on: (opcode, payload, finished), or (FAIL, reason, close code).
Read = tuple[int, bytes | str, bool | int]


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One final, unmasked frame: what a server sends."""
    n = len(payload)
    head = 0x80 | opcode
    if n < 126:
        return bytes((head, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", head, 126, n) + payload
    return struct.pack("!BBQ", head, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit the 125 bytes a control frame holds."""
    data = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return frame(struct.pack("!H", code) + data, CLOSE)


def unmask(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """``data`` XOR the 4-byte ``mask`` (starting ``offset`` bytes into it), in C."""
    n = len(data)
    if not n:
        return data
    if offset:
        mask = mask[offset:] + mask[:offset]
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _valid_close_code(code: int) -> bool:
    """The codes a peer may send (section 7.4): not 1004-1006, 1015, or unassigned."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or (3000 <= code <= 4999)


class FrameReader:
    """Frames from a client, fed in pieces, as events ``(opcode, payload, finished)``.

    ``TEXT`` events carry decoded text (a message may come in several, ``finished`` on
    its last); ``BINARY`` events carry nothing, only where the message ends; ``PING``
    and ``PONG`` their payload; ``CLOSE`` the whole close payload (code and reason,
    checked).  Frames that break the protocol end it with ``(FAIL, reason, code)``,
    where ``code`` is the close code to answer with, and nothing is read after it.
    """

    __slots__ = ("_buffer", "_decoder", "_failed", "_fin", "_mask", "_message", "_offset",
                 "_remaining")  # fmt: skip

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # payload bytes of the current data frame still to come
        self._mask = b""
        self._offset = 0  # how far into the mask the next payload byte is
        self._fin = False
        self._message = 0  # the opcode of the data message in progress, 0 between
        self._decoder: codecs.IncrementalDecoder | None = None
        self._failed = False

    def feed(self, data: bytes) -> list[Read]:
        out: list[Read] = []
        if self._failed:
            return out
        buf = self._buffer + data if self._buffer else data
        pos, n = 0, len(buf)
        try:
            while True:
                if self._remaining:
                    take = min(self._remaining, n - pos)
                    if not take:
                        break
                    chunk = unmask(buf[pos : pos + take], self._mask, self._offset)
                    self._offset = (self._offset + take) & 3
                    self._remaining -= take
                    pos += take
                    self._data(chunk, self._fin and not self._remaining, out)
                    continue
                if n - pos < 2:
                    break
                b0, b1 = buf[pos], buf[pos + 1]
                length, head = b1 & 0x7F, 2
                if length == 126:
                    head = 4
                elif length == 127:
                    head = 10
                if n - pos < head + 4:
                    break
                if length == 126:
                    length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                elif length == 127:
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length >= MAX_LENGTH:
                        raise _Broken(TOO_BIG, "a frame longer than any message")
                fin, opcode = bool(b0 & 0x80), b0 & 0x0F
                if b0 & 0x70:
                    raise _Broken(PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
                if not b1 & 0x80:
                    raise _Broken(PROTOCOL_ERROR, "a client frame must be masked")
                mask = buf[pos + head : pos + head + 4]
                head += 4
                if opcode >= CLOSE:
                    if not fin or length > 125:
                        raise _Broken(PROTOCOL_ERROR, "a control frame must be whole and short")
                    if n - pos < head + length:
                        break
                    payload = unmask(buf[pos + head : pos + head + length], mask)
                    pos += head + length
                    out.append(self._control(opcode, payload))
                    continue
                if opcode == CONTINUATION:
                    if not self._message:
                        raise _Broken(PROTOCOL_ERROR, "a continuation frame with no message")
                elif opcode in (TEXT, BINARY):
                    if self._message:
                        raise _Broken(PROTOCOL_ERROR, "a new message before the last one ended")
                    self._message = opcode
                    if opcode == TEXT:
                        self._decoder = codecs.getincrementaldecoder("utf-8")()
                else:
                    raise _Broken(PROTOCOL_ERROR, f"unknown opcode {opcode}")
                pos += head
                self._fin, self._mask, self._offset, self._remaining = fin, mask, 0, length
                if not length:
                    self._data(b"", fin, out)
        except _Broken as e:
            self._failed = True
            self._buffer = b""
            out.append((FAIL, e.reason, e.code))
            return out
        self._buffer = buf[pos:]
        return out

    def _data(self, chunk: bytes, finished: bool, out: list[Read]) -> None:
        if self._message == TEXT:
            assert self._decoder is not None
            try:
                text = self._decoder.decode(chunk, finished)
            except UnicodeDecodeError:
                raise _Broken(INVALID_DATA, "a text message that is not UTF-8") from None
            out.append((TEXT, text, finished))
        elif finished:
            out.append((BINARY, b"", True))
        if finished:
            self._message = 0
            self._decoder = None

    def _control(self, opcode: int, payload: bytes) -> Read:
        if opcode == CLOSE:
            if len(payload) == 1:
                raise _Broken(PROTOCOL_ERROR, "a close frame with half a code")
            if payload:
                code = int.from_bytes(payload[:2], "big")
                if not _valid_close_code(code):
                    raise _Broken(PROTOCOL_ERROR, f"close code {code} may not be sent")
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    raise _Broken(INVALID_DATA, "a close reason that is not UTF-8") from None
        elif opcode not in (PING, PONG):
            raise _Broken(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        return (opcode, payload, True)


def close_code(payload: bytes) -> tuple[int, str]:
    """The code and reason of a checked ``CLOSE`` payload (``NO_CODE`` when it has none)."""
    if not payload:
        return NO_CODE, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8")


class _Broken(Exception):
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
