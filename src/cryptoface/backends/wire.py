"""One byte framing for every backend's ciphertexts and keys, parsed strictly into our own errors.

Layout::

    magic (6 bytes, one per backend) | header length (uint32, little-endian) | header | payloads

The header is a UTF-8 JSON object holding the framing version ``v``, the ``kind`` of object
("ciphertext", "public", "relin", "rotation", "secret"), the key-set id ``key_id``, the parameter
fingerprint ``fp``, the byte ``sizes`` of the payloads that follow with their CRC-32s (``crc``), and the
fields a backend declares for that kind (level, step, ...). :func:`unpack` checks every field's presence
and type and refuses unknown ones, so backends read typed values and hostile bytes can only end in the
error class the caller names.

The CRC catches corruption on disk or in transit before the bytes reach a C++ deserialiser (OpenFHE aborts
the whole process on some malformed payloads). It is not an authenticity check: a sender who means harm
can recompute it.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptoface.errors import CryptoFaceError, MissingKeyError

VERSION = 1
MAGIC_SIZE = 6
MAX_HEADER = 1 << 16  # a header is a few hundred bytes; anything near this is not ours

SIMULATOR = b"CFSIM1"
DESILO = b"CFDSL1"
OPENFHE = b"CFOFH1"
_OWNERS = {SIMULATOR: "simulator", DESILO: "desilofhe", OPENFHE: "openfhe"}

_LENGTH = struct.Struct("<I")
_RESERVED = frozenset({"v", "kind", "key_id", "fp", "sizes", "crc"})

Scalar = str | int | bool
Schema = Mapping[str, type]  # field name -> str, int or bool


@dataclass(frozen=True)
class Frame:
    """A parsed frame: its key-set id, the backend's typed fields and the payloads."""

    key_id: str
    fields: Mapping[str, Any]
    payloads: tuple[bytes | memoryview, ...]  # memoryviews of the input when unpacked with copy=False


def fingerprint(*parts: object) -> str:
    """Short id of the parameters that make bytes interchangeable (each backend picks its parts)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def pack(magic: bytes, kind: str, key_id: str, fp: str, fields: Mapping[str, Scalar], *payloads: Any) -> bytes:
    """Frame ``payloads`` (bytes-like) under a header of ``kind``, key-set id, fingerprint and ``fields``."""
    if len(magic) != MAGIC_SIZE or set(fields) & _RESERVED:
        raise ValueError("wire.pack: bad magic or a field name the framing reserves")  # a bug in the caller
    header = {**fields, "v": VERSION, "kind": kind, "key_id": key_id, "fp": fp,
              "sizes": [memoryview(p).nbytes for p in payloads], "crc": [zlib.crc32(p) for p in payloads]}
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"".join((magic, _LENGTH.pack(len(head)), head, *payloads))


def unpack(
    data: object,
    magic: bytes,
    kind: str,
    schema: Schema,
    *,
    payloads: int,
    fp: str,
    error: type[CryptoFaceError],
    what: str,
    key_id: str | None = None,
    copy: bool = True,
) -> Frame:
    """Parse ``data`` as a ``kind`` frame with exactly ``schema``'s fields and ``payloads`` payloads.

    ``fp`` must match; so must ``key_id`` when given. Every failure raises ``error`` naming ``what``.
    ``copy=False`` returns the payloads as memoryviews into ``data`` (when it is ``bytes``; into a private copy of
    a bytearray or memoryview) instead of copies: a server checking a whole key set before loading it then holds
    its bytes once, not twice."""
    buf = _as_bytes(data, error, what)
    header, body = _split(buf, magic, error, what)
    _check_reserved(header, kind, fp, key_id, error, what)
    fields = {name: _typed(header, name, typ, error, what) for name, typ in schema.items()}
    unknown = set(header) - _RESERVED - set(schema)
    if unknown:
        raise error(f"{what} header has unexpected fields {sorted(unknown)}; it was not written by this backend")
    parts = _payloads(buf, body, header, payloads, error, what, copy)
    return Frame(header["key_id"], fields, parts)


def _as_bytes(data: object, error: type[CryptoFaceError], what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise error(f"{what} must be bytes, got {type(data).__name__}")


def _split(buf: bytes, magic: bytes, error: type[CryptoFaceError], what: str) -> tuple[dict[str, Any], int]:
    """The parsed header and the offset where the payloads start."""
    start = MAGIC_SIZE + _LENGTH.size
    if len(buf) < start:
        raise error(f"{what} is truncated ({len(buf)} bytes) or not from CryptoFace")
    found = buf[:MAGIC_SIZE]
    if found != magic:
        owner = _OWNERS.get(found)
        hint = f"it was made by the {owner} backend" if owner else "bad magic: not from CryptoFace"
        raise error(f"{what} expected, but {hint}")
    (length,) = _LENGTH.unpack_from(buf, MAGIC_SIZE)
    if length > MAX_HEADER or start + length > len(buf):
        raise error(f"{what} is truncated or its header length ({length} bytes) is corrupt")
    return _parse_header(buf[start : start + length], error, what), start + length


def _parse_header(raw: bytes, error: type[CryptoFaceError], what: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # ValueError covers JSON, UTF-8 and int-size errors
        raise error(f"{what} header is not valid JSON ({exc}); the bytes are corrupt") from exc
    if not isinstance(header, dict):
        raise error(f"{what} header is a JSON {type(header).__name__}, not an object; the bytes are corrupt")
    return header


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate field")  # turned into the caller's error by _parse_header
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _check_reserved(
    header: dict[str, Any], kind: str, fp: str, key_id: str | None, error: type[CryptoFaceError], what: str
) -> None:
    version = header.get("v")
    if type(version) is not int:
        raise error(f"{what} has no framing version: written by an older CryptoFace? re-export or re-encrypt it")
    if version != VERSION:
        raise error(f"{what} uses framing version {version}; this CryptoFace reads version {VERSION}")
    found = _typed(header, "kind", str, error, what)
    if found != kind:
        raise error(f"{what} expected, but these bytes hold a {found!r} object")
    if _typed(header, "fp", str, error, what) != fp:
        raise error(f"{what} was made for other CKKS parameters (or another backend version)")
    found_id = _typed(header, "key_id", str, error, what)
    if key_id is not None and found_id != key_id:
        raise error(f"{what} belongs to another key set ({found_id!r}, expected {key_id!r})")


def _typed(header: dict[str, Any], name: str, typ: type, error: type[CryptoFaceError], what: str) -> Any:
    if name not in header:
        raise error(f"{what} header lacks the field {name!r}")
    value = header[name]
    if type(value) is not typ:  # exact: bool is an int subclass, and a bool level is corruption
        raise error(f"{what} header field {name!r} should be {typ.__name__}, got {type(value).__name__}")
    return value


def _payloads(
    buf: bytes, offset: int, header: dict[str, Any], count: int, error: type[CryptoFaceError], what: str,
    copy: bool = True,
) -> tuple[bytes | memoryview, ...]:
    sizes = _int_list(header, "sizes", count, error, what)
    crcs = _int_list(header, "crc", count, error, what)
    if offset + sum(sizes) != len(buf):
        raise error(f"{what} is truncated or has trailing bytes ({len(buf) - offset} payload bytes, "
                    f"header says {sum(sizes)})")
    parts: list[bytes | memoryview] = []
    view = memoryview(buf)
    for size, crc in zip(sizes, crcs, strict=True):
        part = view[offset : offset + size]
        if zlib.crc32(part) != crc:
            raise error(f"{what} is corrupt (checksum mismatch); fetch or export it again")
        parts.append(part if not copy else part.tobytes())
        offset += size
    return tuple(parts)


def _int_list(header: dict[str, Any], name: str, count: int, error: type[CryptoFaceError], what: str) -> list[int]:
    value = header.get(name)
    if (not isinstance(value, list) or len(value) != count
            or not all(type(v) is int and 0 <= v < 1 << 63 for v in value)):
        raise error(f"{what} header field {name!r} should list {count} non-negative integers")
    return value


# -- key sets (the dict that export_evaluation_keys makes and from_public_keys reads) ---------------------
def export_kinds(exporters: Mapping[str, Callable[[], bytes]], kinds: Iterable[str] | None) -> dict[str, bytes]:
    """Run the exporters of ``kinds`` (all when None), so a caller asking for one key never serialises the rest."""
    names = list(exporters) if kinds is None else list(kinds)
    unknown = [k for k in names if k not in exporters]
    if unknown:
        raise MissingKeyError(f"this key set has no {unknown[0][:80]!r} key; it holds {sorted(exporters)}")
    return {k: exporters[k]() for k in names}


def key_entry(keys: object, name: str) -> object:
    """The bytes of key ``name``; MissingKeyError when ``keys`` is not a mapping or lacks that key."""
    if not isinstance(keys, Mapping):
        raise MissingKeyError(f"a key set is a mapping of kind to bytes, got {type(keys).__name__}")
    if name not in keys:
        raise MissingKeyError(f"the key set has no {name} key")
    return keys[name]


def rotation_names(keys: Mapping[object, object], slots: int) -> dict[str, int]:
    """Each ``rotation:<k>`` name of the key set with its step in 0..slots-1; other names than ``public``
    and ``relin`` are refused, so a stray secret key or a typo never passes silently."""
    steps: dict[str, int] = {}
    for name in keys:
        if name in ("public", "relin"):
            continue
        prefix, _, step = name.partition(":") if isinstance(name, str) else ("", "", "")
        if prefix != "rotation" or not _is_decimal(step):
            raise MissingKeyError(f"unknown key kind {name!r}; a key set holds public, relin and rotation:<step>")
        steps[name] = int(step) % slots
    return steps


def rotation_frames(keys: Mapping[str, object], slots: int, read: Callable[[object, str], Frame]) -> dict[int, Frame]:
    """The frame of each rotation key by step; ``read(data, what)`` unpacks one with an int field ``step``,
    which must agree with the key's name."""
    frames = {}
    for name, step in rotation_names(keys, slots).items():
        frame = read(keys[name], f"key {name!r}")
        if frame.fields["step"] % slots != step:
            raise MissingKeyError(f"key {name!r} holds the rotation by {frame.fields['step']}; the key set is corrupt")
        frames[step] = frame
    return frames


def _is_decimal(text: str) -> bool:
    digits = text[1:] if text[:1] == "-" else text
    return 0 < len(digits) <= 12 and digits.isascii() and digits.isdigit()
