"""Names a person chooses (subjects, tenants): one rule, checked by the client, the service and the store.

A name is data, never part of a path or a command: it is NFC-normalised (so two spellings of "é" are one
name), 1..100 characters, printable, without path or shell separators, dot-dot, surrounding spaces,
control or zero-width/format characters (which make two names look alike).
"""

from __future__ import annotations

import unicodedata

from cryptoface.errors import CryptoFaceError

MAX_NAME_CHARS = 100
FORBIDDEN = set('/\\:*?"<>|')


class InvalidNameError(CryptoFaceError):
    """A subject or tenant name that breaks the naming rule."""


def validate_name(name: str, what: str = "name") -> str:
    """The NFC form of ``name``; raises InvalidNameError saying which rule it breaks."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be text")
    n = unicodedata.normalize("NFC", name)
    if not 1 <= len(n) <= MAX_NAME_CHARS:
        raise InvalidNameError(f"{what} must have 1..{MAX_NAME_CHARS} characters")
    if n != n.strip():
        raise InvalidNameError(f"{what} must not start or end with whitespace")
    if ".." in n:
        raise InvalidNameError(f"{what} must not contain '..'")
    bad = sorted({c for c in n if c in FORBIDDEN})
    if bad:
        raise InvalidNameError(f"{what} must not contain {' '.join(bad)}")
    for c in n:
        if not c.isprintable() or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp"):
            raise InvalidNameError(f"{what} contains an invisible or control character (U+{ord(c):04X})")
    return n
