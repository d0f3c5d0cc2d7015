"""Nickname and room-name rules.

Two names are one name when a reader could take one for the other, so names are compared
by a *skeleton*.  Its core is Unicode's UTS #39 skeleton (decompose, replace each
character by its prototype from ``confusables.txt``, decompose again), taken both before
and after case folding: a capital may look like one Latin letter and its small letter
like another (``I`` like ``l``; ``M`` is ``M`` but ``m`` reads as ``rn``), and a name may
be typed in any case.  Accents are dropped.  Because ``I`` looks like ``l`` and case is
ignored, ``i``, ``I``, ``l`` and ``L`` cannot be kept apart, so the skeleton makes ``i``
and ``l`` one letter: ``AIice``, ``ALlCE``, ``alice`` and a Cyrillic ``Аlice`` collide.

The data (``twisted_chat/core/data/names.txt``) is generated from Unicode's own files by
``python -m twisted_chat.core.data.generate``; its header names the versions.  Invisible
characters (Default_Ignorable_Code_Point, such as the Hangul fillers and zero-width
characters, and the blank Braille pattern) are refused outright: a skeleton could only
drop them, and a name that hides characters cannot be trusted on sight.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

from twisted_chat.core.errors import ChatError, NickInvalid, NickReserved, RoomInvalid

NICK_MAX = 24
# Characters typed may shrink under NFKC (ligatures, full-width forms); more than this
# many times the limit can never fit, and is refused before normalising.
RAW_SLACK = 4
ROOM_MAX = 32
LOBBY = "#lobby"

RESERVED_NICKS = frozenset(
    {
        "server",
        "system",
        "admin",
        "administrator",
        "root",
        "operator",
        "op",
        "moderator",
        "mod",
        "groupchat",
        "chanserv",
        "nickserv",
        "everyone",
        "all",
        "nobody",
        "you",
        "me",
    }
)

# Blank-looking characters that Unicode does not list as default-ignorable.
_BLANK_EXTRA = frozenset("\u2800\U0001d159")  # BRAILLE PATTERN BLANK, MUSICAL NULL NOTEHEAD
# A folded key made only of these is an ordinary Latin spelling; two such keys are never
# merged by the case repairs below (that would make e.g. "h" and "n" one letter).
_BASIC = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_I_IS_L = {ord("i"): "l"}
_DECORATION = re.compile(r"^[\d_-]+|[\d_-]+$")
_LOOPS = 6  # map and fold settle within three rounds for every character in the data
_CACHE_LEN = 2 * max(NICK_MAX, ROOM_MAX + 1)

_E = TypeVar("_E", bound=ChatError)


@dataclass(frozen=True)
class _Tables:
    unicode_version: str
    prototypes: dict[int, str]
    ignorable_starts: tuple[int, ...]
    ignorable_ends: tuple[int, ...]
    case_repairs: dict[int, str]


def _strip_marks(text: str) -> str:
    if not any(unicodedata.combining(c) for c in text):
        return text
    return "".join(c for c in text if not unicodedata.combining(c))


def _fold(text: str, prototypes: dict[int, str], repairs: dict[int, str]) -> str:
    """Map to prototypes and case-fold until nothing changes."""
    s = _strip_marks(unicodedata.normalize("NFKD", text))
    for _ in range(_LOOPS):
        mapped = _strip_marks(unicodedata.normalize("NFKD", s.translate(prototypes)))
        folded = _strip_marks(unicodedata.normalize("NFKD", mapped.casefold()))
        if folded == s:
            break
        s = folded
    return s.translate(repairs)


def _case_repairs(prototypes: dict[int, str]) -> dict[int, str]:
    """Make the skeleton ignore case where the confusables data alone would not.

    Cyrillic ``В`` maps to ``B`` but ``в`` to small-capital ``ʙ``, so without help ``Ваня``
    and ``ваня`` would be two names and ``/msg ваня`` would miss ``Ваня``.  For every cased
    letter whose capital and small forms fold differently, the two results are merged,
    the Latin one kept, unless both are ordinary Latin letters (Greek ``Η``/``η`` look like
    ``H``/``n``): merging those would make unrelated Latin names collide.
    """
    candidates: set[str] = set()
    for cp, target in prototypes.items():
        for ch in (chr(cp), *target):
            candidates.update(v for v in (ch, ch.lower(), ch.upper()) if len(v) == 1)
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while key in parent:
            key = parent[key]
        return key

    def basic(key: str) -> bool:
        return all(c in _BASIC for c in key)

    for ch in sorted(candidates):
        if ch.lower() == ch.upper() or not unicodedata.category(ch).startswith("L"):
            continue
        keys = sorted({_fold(v, prototypes, {}) for v in (ch, ch.lower(), ch.upper())})
        for key in keys[1:]:
            a, b = root(keys[0]), root(key)
            if a == b or (basic(a) and basic(b)) or (len(a) > 1 and len(b) > 1):
                continue
            keep, drop = sorted((a, b), key=lambda k: (not basic(k), len(k), k))
            parent[drop] = keep
    repairs = {ord(k): root(k) for k in parent if len(k) == 1}
    for cp, target in repairs.items():  # a kept key may itself hold a dropped letter
        for _ in range(_LOOPS):
            again = target.translate(repairs)
            if again == target:
                break
            target = again
        repairs[cp] = target
    return repairs


def _parse(text: str) -> _Tables:
    version = ""
    prototypes: dict[int, str] = {}
    starts: list[int] = []
    ends: list[int] = []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "confusable":
            source, _, target = rest.partition(" ; ")
            prototypes[int(source, 16)] = "".join(chr(int(h, 16)) for h in target.split())
        elif kind == "ignorable":
            first, _, last = rest.partition("..")
            starts.append(int(first, 16))
            ends.append(int(last, 16))
        elif kind == "unicode":
            version = rest.strip()
    if not prototypes or not starts or not version:
        raise RuntimeError("twisted_chat/core/data/names.txt is incomplete: regenerate it")
    return _Tables(version, prototypes, tuple(starts), tuple(ends), _case_repairs(prototypes))


@functools.cache
def _tables() -> _Tables:
    """Loaded on first use, so importing this module (the client does) costs nothing."""
    text = resources.files("twisted_chat.core.data").joinpath("names.txt").read_text("utf-8")
    return _parse(text)


def _looks(name: str) -> str:
    """What a reader sees, ignoring case and accents: equal for look-alikes."""
    t = _tables()
    return _fold(name, t.prototypes, t.case_repairs).replace("_", "-").replace("vv", "w")


@functools.lru_cache(maxsize=4096)
def _cached_skeleton(name: str) -> str:
    return _looks(name).translate(_I_IS_L)


def skeleton(name: str) -> str:
    """The key two names collide on when they would look the same to a reader.

    Cached, since it runs on every nickname change and private-message lookup; strings
    too long to be a name (a hostile /msg target) are computed but not kept.
    """
    if len(name) > _CACHE_LEN:
        return _looks(name).translate(_I_IS_L)
    return _cached_skeleton(name)


def could_be_nick(text: str) -> bool:
    """Cheap first test for text that will be looked up as a nickname (a /msg target).

    NFKC can turn one character into eighteen, and the skeleton runs three times per
    lookup: text far longer than any nickname is answered without any of that work.
    """
    return 0 < len(text) <= NICK_MAX * RAW_SLACK


def skeletons(name: str) -> tuple[str, ...]:
    """Every key ``name`` may collide on: as written, in small and in capital letters.

    A few Greek and Cyrillic letters look like one Latin letter as a capital and another
    as a small letter (Б/б: B and 6), so one skeleton cannot ignore both case and
    look-alikes.  Two names are the same nickname when any of their keys are equal.
    """
    first = skeleton(name)
    keys = [first]
    for variant in (name.casefold(), name.upper()):
        key = skeleton(variant)
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def conversation(a: str, b: str) -> str:
    """The key two nicknames' private messages are kept under, the same both ways; it
    cannot be a room key (those start with ``#``)."""
    first, second = sorted((a.casefold(), b.casefold()))
    return f"@{first} {second}"


def unicode_version() -> str:
    """Version of the confusables data in use, for logs and bug reports."""
    return _tables().unicode_version


def _invisible(ch: str) -> bool:
    if ch in _BLANK_EXTRA:
        return True
    t = _tables()
    cp = ord(ch)
    i = bisect.bisect_right(t.ignorable_starts, cp) - 1
    return i >= 0 and cp <= t.ignorable_ends[i]


def _refuse_invisible(text: str, what: str, error: type[_E]) -> None:
    hidden = [c for c in text if _invisible(c)]
    if hidden:
        codes = ", ".join(dict.fromkeys(f"U+{ord(c):04X}" for c in hidden))
        raise error(f"a {what} may not contain invisible characters ({codes})")


@functools.cache
def _reserved() -> dict[str, str]:
    """Look of every capitalisation of every reserved name (``ADMIN`` reads ``ADMlN``)."""
    looks: dict[str, str] = {}
    for word in sorted(RESERVED_NICKS):
        choices = [(c,) if _looks(c) == _looks(c.upper()) else (c, c.upper()) for c in word]
        for spelling in itertools.product(*choices):
            looks.setdefault(_looks("".join(spelling)), word)
    return looks


def reserved_as(name: str) -> str | None:
    """The reserved name that ``name`` passes for, even with ``_``, ``-`` or digits added.

    ``Admin_``, ``_root``, ``server-`` and ``admin2`` would pass for staff in a busy room;
    ``opal`` or ``mega`` do not, since only whole names and their decorations count.  The
    comparison keeps ``i`` apart from ``l`` (it checks every capitalisation instead), so
    ``Ali`` is not taken for ``all`` while ``AlI`` is.
    """
    reserved = _reserved()
    core = _DECORATION.sub("", name)
    for candidate in (name, core):
        word = reserved.get(_looks(candidate)) if candidate else None
        if word is not None:
            return word
    return None


def _nick_char_ok(ch: str, first: bool) -> bool:
    if ch in "_":
        return True
    cat = unicodedata.category(ch)
    if cat.startswith("L"):
        return True
    if first:
        return False
    return cat == "Nd" or ch == "-" or cat == "Mn"


def validate_nick(raw: str) -> str:
    """Return the nickname as it will be shown, or raise saying why it is refused."""
    text = raw.strip()
    if not text:
        raise NickInvalid("a nickname cannot be empty")
    if len(text) > NICK_MAX * RAW_SLACK:  # before any Unicode work, which grows with it
        raise NickInvalid(f"a nickname is at most {NICK_MAX} characters")
    _refuse_invisible(text, "nickname", NickInvalid)  # before NFKC: name what was typed
    name = unicodedata.normalize("NFKC", text)
    _refuse_invisible(name, "nickname", NickInvalid)
    if len(name) > NICK_MAX:
        raise NickInvalid(f"a nickname is at most {NICK_MAX} characters")
    if not _nick_char_ok(name[0], first=True):
        raise NickInvalid(
            "a nickname starts with a letter or '_' and contains only letters, digits, "
            f"'_' and '-' (not {name[0]!a})"
        )
    bad = [c for c in name[1:] if not _nick_char_ok(c, first=False)]
    if bad:
        raise NickInvalid(
            f"a nickname may contain only letters, digits, '_' and '-' (not {bad[0]!a})"
        )
    if not any(unicodedata.category(c).startswith("L") for c in name):
        raise NickInvalid("a nickname needs at least one letter")
    if not skeleton(name).strip("-"):
        raise NickInvalid("a nickname needs at least one letter that can be seen")
    word = reserved_as(name)
    if word is not None:
        raise NickReserved(f"the nickname {name!r} is reserved (it reads as {word!r})")
    return name


def _room_char_ok(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat.startswith("L") or cat == "Nd" or cat == "Mn" or ch in "_-."


def validate_room(raw: str) -> str:
    """Return the room name as shown (always starting with '#'), or raise saying why."""
    text = raw.strip()
    if len(text) > (ROOM_MAX + 1) * RAW_SLACK:
        raise RoomInvalid(f"a room name is at most {ROOM_MAX} characters after '#'")
    _refuse_invisible(text, "room name", RoomInvalid)
    name = unicodedata.normalize("NFKC", text)
    _refuse_invisible(name, "room name", RoomInvalid)
    if not name.startswith("#"):
        name = "#" + name
    body = name[1:]
    if not body:
        raise RoomInvalid("a room name needs at least one character after '#'")
    if len(body) > ROOM_MAX:
        raise RoomInvalid(f"a room name is at most {ROOM_MAX} characters after '#'")
    bad = [c for c in body if not _room_char_ok(c)]
    if bad:
        raise RoomInvalid(
            f"a room name may contain only letters, digits, '_', '-' and '.' (not {bad[0]!a})"
        )
    return name


def room_key(name: str) -> str:
    """Rooms are found ignoring case and look-alikes, like nicknames."""
    return skeleton(name)
