"""Property tests: any bytes at all give clean lines or a clear error, never an exception."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.doubles import ProtocolHarness
from twisted_chat.core.names import skeleton, validate_nick
from twisted_chat.core.sanitize import clean_text, is_clean
from twisted_chat.doors.framing import LineFramer, TelnetFilter
from twisted_chat.rules.limits import TOO_LONG, LineTooLong


@given(st.text())
def test_clean_text_leaves_nothing_unsafe(text):
    cleaned = clean_text(text)
    assert is_clean(cleaned)
    assert "\x1b" not in cleaned and "\n" not in cleaned and "\r" not in cleaned
    assert all(unicodedata.category(c) != "Cc" for c in cleaned)
    assert clean_text(cleaned) == cleaned


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=8, max_value=64))
def test_framer_never_exceeds_limit_and_loses_no_short_line(chunks, limit):
    framer = LineFramer(limit)
    out = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
        assert framer.buffered <= limit + 1
    for item in out:
        assert isinstance(item, LineTooLong) or (len(item) <= limit and b"\n" not in item)
    whole = b"".join(chunks)
    complete = whole.split(b"\n")[:-1]
    expected = [
        TOO_LONG if len(line.removesuffix(b"\r")) > limit else line.removesuffix(b"\r")
        for line in complete
    ]
    # A line that overflowed before its end was reported as soon as it overflowed.
    assert [i for i in out if i is not TOO_LONG] == [i for i in expected if i is not TOO_LONG]


@given(st.lists(st.binary(max_size=50), max_size=10))
def test_telnet_filter_output_never_has_iac(chunks):
    f = TelnetFilter()
    for chunk in chunks:
        assert 0xFF not in f.feed(chunk)


@given(st.binary(max_size=4000))
@settings(max_examples=150, deadline=None)
def test_protocol_survives_any_bytes(data):
    h = ProtocolHarness(max_line=256)
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send(data)
    bob.send(b"\n")
    raw = alice.output()
    text = raw.decode("utf-8")
    for line in text.split("\r\n"):
        assert "\x1b" not in line and "\r" not in line
        assert line == "" or line.startswith(("[#lobby] <bob> ", "[#lobby] * bob ", "*** ", "[PM "))


@given(st.text(max_size=30))
def test_nick_validation_either_accepts_clean_name_or_raises_chat_error(raw):
    from twisted_chat.core.errors import ChatError

    try:
        nick = validate_nick(raw)
    except ChatError as e:
        assert e.message
    else:
        assert is_clean(nick) and " " not in nick and skeleton(nick)
