"""Reading client frames: any split of the bytes reads the same, nothing whole is held,
and every frame a client may not send ends the session with the right close code."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from twisted_chat.doors.wsframes import (
    BINARY,
    CLOSE,
    FAIL,
    PING,
    PONG,
    TEXT,
    FrameReader,
    close_code,
    close_frame,
    frame,
    unmask,
)


def client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def masked(b0: int, payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A client frame by hand: first byte ``b0``, masked ``payload``."""
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + mask + unmask(payload, mask)


def messages(events: list) -> list:
    """Whole messages and control frames, pieces of text joined."""
    out, text = [], ""
    for opcode, payload, finished in events:
        if opcode == TEXT:
            text += payload
            if finished:
                out.append(("text", text))
                text = ""
        else:
            out.append((opcode, payload))
    return out


parts = st.lists(
    st.one_of(
        st.tuples(st.just("text"), st.text(max_size=300), st.integers(1, 4)),
        st.tuples(st.just("binary"), st.binary(max_size=300), st.integers(1, 3)),
        st.tuples(st.just("ping"), st.binary(max_size=125), st.just(1)),
    ),
    max_size=8,
)


def stream(plan: list) -> tuple[bytes, list]:
    """The bytes wsproto's client sends for ``plan``, and what reading them should give."""
    ws = client()
    data, expected = b"", list[tuple[object, object]]()
    for kind, payload, pieces in plan:
        if kind == "ping":
            data += ws.send(Ping(payload))
            expected.append((PING, payload))
            continue
        size = max(1, len(payload) // pieces + 1)
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)] or [payload]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            event = TextMessage if kind == "text" else BytesMessage
            data += ws.send(event(chunk, message_finished=last))
        expected.append(("text", payload) if kind == "text" else (BINARY, b""))
    data += ws.send(CloseConnection(1001, "bye"))
    expected.append((CLOSE, struct.pack("!H", 1001) + b"bye"))
    return data, expected


@settings(max_examples=200, deadline=None)
@given(plan=parts, cuts=st.lists(st.integers(0, 5000), max_size=10))
def test_any_split_reads_what_was_sent(plan, cuts):
    data, expected = stream(plan)
    reader = FrameReader()
    events = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        events += reader.feed(data[last:cut])
        last = cut
    events += reader.feed(data[last:])
    assert messages(events) == expected


def test_a_big_frame_is_handed_on_as_it_comes_never_held_whole():
    payload = "é" * 50_000  # two bytes each: a UTF-8 character split across reads too
    data = client().send(TextMessage(payload))
    reader = FrameReader()
    seen, ends = 0, 0
    for i in range(0, len(data), 999):
        for opcode, text, finished in reader.feed(data[i : i + 999]):
            assert opcode == TEXT
            seen += len(text)
            ends += bool(finished)
        assert len(reader._buffer) < 16  # at most a partial header is ever kept
    assert seen == 50_000 and ends == 1


def test_unmask_at_any_offset_matches_the_plain_definition():
    mask = b"\x9a\x0b\xff\x10"
    data = bytes(range(256)) * 3
    for offset in range(4):
        plain = bytes(b ^ mask[(i + offset) % 4] for i, b in enumerate(data))
        assert unmask(data, mask, offset) == plain
    assert unmask(b"", mask) == b""


def test_ping_pong_and_close_payloads():
    ws = client()
    reader = FrameReader()
    events = reader.feed(
        ws.send(Ping(b"p1")) + ws.send(Pong(b"p2")) + ws.send(CloseConnection(1000))
    )
    assert [(o, p) for o, p, _ in events] == [
        (PING, b"p1"), (PONG, b"p2"), (CLOSE, struct.pack("!H", 1000))
    ]  # fmt: skip
    payload = events[2][1]
    assert isinstance(payload, bytes) and close_code(payload) == (1000, "")
    assert close_code(b"") == (1005, "")


@pytest.mark.parametrize(
    ("data", "code", "why"),
    [
        (frame(b"hello"), 1002, "must be masked"),
        (masked(0x81 | 0x40, b"x"), 1002, "reserved bits"),
        (masked(0x80, b"x"), 1002, "continuation frame with no message"),
        (masked(0x01, b"a") + masked(0x81, b"b"), 1002, "before the last one ended"),
        (masked(0x09, b"p"), 1002, "whole and short"),
        (masked(0x89, b"p" * 126), 1002, "whole and short"),
        (masked(0x83, b"x"), 1002, "unknown opcode 3"),
        (masked(0x8B, b"x"), 1002, "unknown opcode 11"),
        (masked(0x81, b"\xff\xfe"), 1007, "not UTF-8"),
        (masked(0x01, b"\xc3") + masked(0x80, b"("), 1007, "not UTF-8"),
        (masked(0x88, b"\x03"), 1002, "half a code"),
        (masked(0x88, struct.pack("!H", 1005)), 1002, "close code 1005"),
        (masked(0x88, struct.pack("!H", 999)), 1002, "close code 999"),
        (masked(0x88, struct.pack("!H", 1000) + b"\xff"), 1007, "reason that is not UTF-8"),
        (bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 63) + b"mask", 1009, "longer"),
    ],
)
def test_frames_a_client_may_not_send(data, code, why):
    reader = FrameReader()
    events = reader.feed(data)
    assert events[-1][0] == FAIL and events[-1][2] == code and why in events[-1][1]
    assert reader.feed(masked(0x81, b"more")) == []  # nothing is read after it


def test_an_empty_text_message_and_an_unfinished_utf8_character_across_frames():
    reader = FrameReader()
    data = masked(0x81, b"") + masked(0x01, "€".encode()[:2]) + masked(0x80, "€".encode()[2:])
    assert messages(reader.feed(data)) == [("text", ""), ("text", "€")]


def test_server_frames_have_the_right_length_forms():
    for n in (0, 125, 126, 65535, 65536):
        data = frame(b"x" * n)
        reader_side = client()
        reader_side.receive_data(data)
        (event,) = list(reader_side.events())
        assert isinstance(event, TextMessage) and len(event.data) == n
    reader_side = client()
    reader_side.receive_data(close_frame(1000, "é" * 100))  # cut to fit, whole characters
    (event,) = list(reader_side.events())
    assert isinstance(event, CloseConnection) and event.code == 1000
    assert event.reason == "é" * 61
