"""Nickname and room-name rules: look-alikes collide, invisible characters are refused.

Non-ASCII letters are written as escapes: a look-alike that reads as Latin in the source
would hide what the test is about.
"""

from __future__ import annotations

import unicodedata
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_chat.core.data.generate import render
from twisted_chat.core.errors import ChatError, NickInvalid, NickReserved, RoomInvalid
from twisted_chat.core.names import (
    LOBBY,
    room_key,
    skeleton,
    unicode_version,
    validate_nick,
    validate_room,
)
from twisted_chat.core.service import GUEST_NAME

FILLERS = ["\u115f", "\u1160", "\u3164", "\uffa0"]  # Hangul fillers: category Lo, blank


@pytest.mark.parametrize(
    "taken,attempt",
    [
        ("alice", "AIice"),  # capital I for l
        ("alice", "ALlCE"),  # small l for I
        ("carol", "CaroI"),
        ("carol", "\u1d04arol"),  # LATIN LETTER SMALL CAPITAL C
        ("carol", "c\u0251rol"),  # LATIN SMALL LETTER ALPHA
        ("HACK", "\u0397ACK"),  # Greek capital Eta
        ("paul", "pa\u028bl"),  # LATIN SMALL LETTER V WITH HOOK
        ("ANNA", "\u0391\u039d\u039d\u0391"),  # Greek capitals Alpha, Nu, Nu, Alpha
    ],
)
def test_lookalikes_collide(taken, attempt):
    assert skeleton(attempt) == skeleton(taken)


@pytest.mark.parametrize(
    "taken,attempt",
    [
        ("alice", "ALICE"),
        ("alice", "\u00c1lice"),  # accents are ignored
        ("alice", "\u0430lice"),  # Cyrillic small a
        ("alice", "\u0410lice"),  # Cyrillic capital A
        ("Alice", "A1ice"),
        ("TOM", "\u0422\u041e\u041c"),  # Cyrillic capitals Te, O, Em
        ("victor", "\u03bdictor"),  # Greek small nu
        ("nick", "\u03b7ick"),  # Greek small eta
        ("BOB", "\u0392\u039f\u0392"),  # Greek capitals Beta, Omicron, Beta
        ("bob1", "bobl"),
        ("fiona", "\ufb01ona"),  # NFKC ligature
        ("mary", "rnary"),
        ("Mary", "rnary"),
        ("will", "vvill"),
        ("a_b", "a-b"),
        ("zo\u00eb", "ZOE"),
        ("\u0412\u0430\u043d\u044f", "\u0432\u0430\u043d\u044f"),  # Cyrillic: case ignored
        ("\u0412\u0430\u043d\u044f", "\u0412\u0410\u041d\u042f"),
        ("#lobby", "#LOBBY"),
    ],
)
def test_existing_promises_still_hold(taken, attempt):
    assert skeleton(attempt) == skeleton(taken)


@pytest.mark.parametrize(
    "a,b",
    [("alice", "alicia"), ("nick", "hick"), ("anna", "anne"), ("bob", "rob"), ("ali", "al")],
)
def test_different_names_stay_different(a, b):
    assert skeleton(a) != skeleton(b)


def test_case_is_ignored_for_every_latin_and_cyrillic_letter_but_a_few():
    # Cyrillic Be and Ghe (and Ghe's variants): the capital and the small letter look
    # like different Latin letters (b and 6; the capital reads as Greek Gamma, whose small
    # letter reads as y, while the small Ghe reads as r). Look wins over case for them.
    by_look = {"\u0411", "\u0413", "\u0403", "\u0490", "\u0492"}
    letters = [chr(cp) for cp in [*range(0x41, 0x5B), *range(0x400, 0x530)]]
    mismatched = {
        c for c in letters if unicodedata.category(c) == "Lu" and skeleton(c) != skeleton(c.lower())
    }
    assert mismatched == by_look


@pytest.mark.parametrize("filler", FILLERS)
def test_hangul_fillers_are_refused_appended_or_alone(filler):
    for raw in (f"alice{filler}", filler, filler * 3, f"al{filler}ice"):
        with pytest.raises(NickInvalid, match=rf"invisible characters \(U\+{ord(filler):04X}\)"):
            validate_nick(raw)


@pytest.mark.parametrize(
    "ch",
    [
        "\u00ad",
        "\u034f",
        "\u17b4",
        "\u180e",
        "\u200b",
        "\u200d",
        "\u202e",
        "\u2060",
        "\u2800",  # BRAILLE PATTERN BLANK: not default-ignorable, still blank
        "\ufe0f",
        "\ufeff",
        "\U0001d173",
        "\U000e0041",
    ],
)
def test_invisible_characters_are_refused_with_a_clear_reason(ch):
    with pytest.raises(NickInvalid) as info:
        validate_nick(f"al{ch}ice")
    assert info.value.message == (
        f"a nickname may not contain invisible characters (U+{ord(ch):04X})"
    )


def test_invisible_message_names_the_character_that_was_typed():
    # NFKC turns U+FFA0 into U+1160; the user typed the former.
    with pytest.raises(NickInvalid, match=r"\(U\+FFA0\)"):
        validate_nick("bob\uffa0")


@pytest.mark.parametrize(
    "raw",
    ["Admin_", "root_", "server-", "_admin", "Admin2", "_root-", "admin__2", "nobody_1", "me2"],
)
def test_reserved_names_stay_reserved_with_decorations(raw):
    with pytest.raises(NickReserved, match="reserved"):
        validate_nick(raw)


@pytest.mark.parametrize("raw", ["adm1n", "ADMlN", "AlI", "\u1d00dmin", "\u0280oot"])
def test_reserved_names_stay_reserved_as_lookalikes(raw):
    with pytest.raises(NickReserved):
        validate_nick(raw)


@pytest.mark.parametrize("raw", ["SERVER", "\u00c4dmin", "r00t", "AdMIn", "A11", "\u0391dmin"])
def test_reserved_names_already_caught_still_are(raw):
    with pytest.raises(NickReserved):
        validate_nick(raw)


@pytest.mark.parametrize(
    "raw",
    ["opal", "mega", "Ali", "all4one", "modern", "Youtube", "rooted", "admins", "op_ed"],
)
def test_names_that_merely_contain_a_reserved_name_are_allowed(raw):
    assert validate_nick(raw) == raw


def test_reserved_message_says_which_name_it_reads_as():
    with pytest.raises(NickReserved) as info:
        validate_nick("Adm1n_")
    assert info.value.message == "the nickname 'Adm1n_' is reserved (it reads as 'admin')"


@pytest.mark.parametrize("n", [1, 2, 7, 10, 12, 100, 2024])
def test_guest_names_are_still_recognised(n):
    for nick in (f"guest{n}", f"Guest{n}", f"GUEST{n}"):
        assert GUEST_NAME.fullmatch(skeleton(nick)), nick


@pytest.mark.parametrize("nick", ["guests", "guest_1", "questo", "guestbook"])
def test_other_names_are_not_guest_names(nick):
    assert not GUEST_NAME.fullmatch(skeleton(nick))


def test_room_lookalikes_share_a_key():
    assert room_key(validate_room("#Iobby")) == room_key(LOBBY)
    assert room_key(validate_room("#\u217cobby")) == room_key(LOBBY)  # SMALL ROMAN NUMERAL FIFTY


@pytest.mark.parametrize("filler", FILLERS)
def test_room_names_with_invisible_characters_are_refused(filler):
    for raw in (f"#lobby{filler}", f"#{filler}", f"lob{filler}by"):
        with pytest.raises(RoomInvalid, match="room name may not contain invisible"):
            validate_room(raw)


def test_data_file_names_its_source_and_version():
    header = resources.files("twisted_chat.core.data").joinpath("names.txt").read_text("utf-8")
    assert f"confusables.txt, UTS #39 Version {unicode_version()}" in header
    assert "Default_Ignorable_Code_Point from DerivedCoreProperties" in header


def test_generator_keeps_name_characters_and_ignorable_ranges():
    confusables = (
        b"# Date: 2026-01-01\n# Version: 99.0.0\n"
        b"0430 ;\t0061 ;\tMA\t# CYRILLIC SMALL LETTER A\n"
        b"0031 ;\t006C ;\tMA\t# DIGIT ONE\n"
        b"2010 ;\t002D ;\tMA\t#* HYPHEN (punctuation: never in a name)\n"
        b"FB01 ;\t0066 0069 ;\tMA\t# LIGATURE FI (NFKD splits it first)\n"
    )
    properties = (
        b"# DerivedCoreProperties-99.0.0.txt\n"
        b"115F..1160    ; Default_Ignorable_Code_Point # Lo\n"
        b"1161          ; Default_Ignorable_Code_Point # made up, merges\n"
        b"0041          ; Alphabetic # A\n"
    )
    out = render(confusables, properties)
    assert "unicode 99.0.0" in out
    assert "ignorable 115F..1161" in out
    assert "confusable 0430 ; 0061" in out and "confusable 0031 ; 006C" in out
    assert "2010" not in out and "FB01" not in out


HIDDEN = [*FILLERS, "\u200b", "\u2800", "\u00ad", "\u034f", "\ufe0f", "\U000e0020"]


@given(st.text(max_size=30) | st.text(st.sampled_from(["a", "b", "_", "-", "1", *HIDDEN])))
def test_accepted_names_hold_no_invisible_characters(raw):
    try:
        nick = validate_nick(raw)
    except ChatError:
        return
    assert skeleton(nick).strip("-")
    assert not any(c in nick for c in HIDDEN)
