"""Nickname and room-name rules.

Nicknames are unique under a *skeleton*: NFKC, casefold, accents dropped and common
look-alike letters from other scripts folded to Latin, so ``Alice``, ``ALICE``, ``Álice``
and a Cyrillic ``Аlice`` are all the same nickname.  This is a compact subset of the
Unicode confusables data (UTS #39), chosen for the scripts people actually mix up.
"""

from __future__ import annotations

import unicodedata

from twisted_chat.errors import NickInvalid, NickReserved, RoomInvalid

NICK_MAX = 24
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

_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a",
        "в": "b",
        "с": "c",
        "ԁ": "d",
        "е": "e",
        "ё": "e",
        "һ": "h",
        "і": "i",
        "ї": "i",
        "ј": "j",
        "к": "k",
        "м": "m",
        "н": "h",
        "о": "o",
        "р": "p",
        "ԛ": "q",
        "ѕ": "s",
        "т": "t",
        "у": "y",
        "ԝ": "w",
        "х": "x",
        "ү": "y",
        "ɡ": "g",
        "ӏ": "l",
        # Greek
        "α": "a",
        "β": "b",
        "ε": "e",
        "η": "n",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "ω": "w",
        "ϲ": "c",
        "ϳ": "j",
        # Latin and digits that read as letters
        "ı": "i",
        "ȷ": "j",
        "ł": "l",
        "ø": "o",
        "đ": "d",
        "ħ": "h",
        "0": "o",
        "1": "l",
    }
)


def skeleton(name: str) -> str:
    """The key two names collide on when they would look the same to a reader."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    decomposed = unicodedata.normalize("NFD", folded)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    mapped = stripped.translate(_CONFUSABLES)
    # "rn" reads as "m", and "vv" as "w", in most terminal fonts.
    mapped = mapped.replace("rn", "m").replace("vv", "w").replace("_", "-")
    return unicodedata.normalize("NFC", mapped)


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
    name = unicodedata.normalize("NFKC", raw.strip())
    if not name:
        raise NickInvalid("a nickname cannot be empty")
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
    key = skeleton(name)
    if key in _RESERVED_SKELETONS:
        raise NickReserved(f"the nickname {name!r} is reserved")
    return name


_RESERVED_SKELETONS = frozenset(skeleton(n) for n in RESERVED_NICKS)


def _room_char_ok(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat.startswith("L") or cat == "Nd" or cat == "Mn" or ch in "_-."


def validate_room(raw: str) -> str:
    """Return the room name as shown (always starting with '#'), or raise saying why."""
    name = unicodedata.normalize("NFKC", raw.strip())
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
