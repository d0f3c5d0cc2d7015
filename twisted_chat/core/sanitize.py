"""Make untrusted text safe to show on someone else's terminal.

Everything a user types reaches other people's terminals, so escape sequences, control
characters, line separators and bidi overrides are removed here before any fan-out: no
user can move another's cursor, clear a screen or forge a line.
"""

from __future__ import annotations

import re
import unicodedata

# ESC-introduced sequences, removed whole so no stray parameters are left behind:
# CSI (ESC [ ... final), OSC/DCS/SOS/PM/APC strings (ESC ] ... BEL or ST), and two-byte
# escapes (ESC + one character).  The 8-bit C1 introducers are handled the same way.
_ESCAPES = re.compile(
    r"""
      (?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?       # CSI
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?  # strings
    | \x1b[\x20-\x2f]*[\x30-\x7e]?                               # other escapes
    """,
    re.VERBOSE,
)

# Bidirectional overrides, embeddings and isolates: they reorder what follows on the line.
_BIDI = {chr(c) for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}

# Zero-width joiners are format characters but part of ordinary emoji sequences.
_ALLOWED_FORMAT = {"\u200c", "\u200d"}

_FAST_SAFE = re.compile(r"[\x20-\x7e]*")


def _unsafe(ch: str) -> bool:
    if ch in _BIDI:
        return True
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Zl", "Zp", "Cs", "Co", "Cn"):
        return True
    return cat == "Cf" and ch not in _ALLOWED_FORMAT


def clean_text(text: str) -> str:
    """Return ``text`` with escape sequences and unsafe characters removed.

    Tabs become a space so words stay apart; the result never contains a line break.
    """
    if _FAST_SAFE.fullmatch(text):
        return text
    text = _ESCAPES.sub("", text).replace("\t", " ")
    return "".join(ch for ch in text if not _unsafe(ch))


def is_clean(text: str) -> bool:
    """True when ``text`` holds nothing :func:`clean_text` would remove."""
    return not _ESCAPES.search(text) and "\t" not in text and not any(_unsafe(c) for c in text)
