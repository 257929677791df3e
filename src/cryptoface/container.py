"""Ciphertext container files: one or more framed ciphertexts plus what a reader must check before using them.

A container is what one process hands the next (client encrypt -> server compute -> client decrypt) when
they share files instead of a connection. It records which backend, CKKS parameters and key set the
ciphertexts belong to and what they hold, so a stage refuses a file of another key set or parameters with
a message instead of computing garbage or crashing inside a C++ deserialiser.

Byte layout (format 1; integers little-endian)::

    offset   size  field
    0        4     magic b"CFCT"
    4        2     format version (uint16), 1
    6        4     header length H (uint32), at most MAX_HEADER bytes
    10       H     header: a UTF-8 JSON object, exactly the fields below
    10 + H   ...   payloads: ciphertext 0, 1, ... concatenated, nothing after the last one

Header fields:

    ``backend``    str        backend name ("simulator", "desilofhe", "openfhe")
    ``params_id``  str        :func:`params_id` of the CKKS parameters (the store's ``params_fingerprint``)
    ``key_id``     str        ``backend.key_id`` of the key set the ciphertexts are under
    ``layout``     str        what the ciphertexts hold, one of :data:`LAYOUTS`
    ``levels``     [int]      remaining level of each ciphertext (``backend.level(ct)``)
    ``meta``       {str: v}   small values (str, int or finite float): resolution, stride, count, pair index...
    ``sizes``      [int]      byte length of each payload
    ``sha256``     [str]      hex sha256 of each payload

Each payload is exactly ``backend.serialize(ct)``: the backend's own framing (:mod:`cryptoface.backends.wire`,
which repeats the key-set id and a parameter fingerprint per ciphertext). ``backend.key_id`` is the backend's
key-set id (what the wire frames carry), which is not necessarily the key home's ``ClientKeys.key_id``.

Reading treats the bytes as hostile: the header length, the number of ciphertexts and the meta entries are
bounded, the sizes must add up to the file's length exactly, JSON is parsed without pickle and with duplicate
keys and NaN refused, and every defect raises :class:`ContainerError` saying what is wrong. The digests catch
corruption on disk or in transit; they are not an authenticity check (a writer who means harm can recompute
them).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptoface.backends import read_untrusted
from cryptoface.backends.protocol import CkksBackend, CkksParameters
from cryptoface.errors import CiphertextError, CryptoFaceError
from cryptoface.params import params_to_json

CONTAINER_FORMAT = 1
LAYOUTS = ("image-monolithic", "image-units", "template", "scores")
MAGIC = b"CFCT"
MAX_HEADER = 1 << 20  # ~100 bytes per ciphertext: room for MAX_CIPHERTEXTS and the meta
MAX_CIPHERTEXTS = 4096
MAX_META = 64
MAX_META_TEXT = 1024
MAX_LEVEL = 1 << 16

_PREFIX = struct.Struct("<4sHI")  # magic, format version, header length
_FIELDS = frozenset({"backend", "params_id", "key_id", "layout", "levels", "meta", "sizes", "sha256"})
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

MetaValue = str | int | float


class ContainerError(CiphertextError):
    """A ciphertext container file is malformed, of another format version, or for another key set."""


@dataclass(frozen=True)
class CiphertextFile:
    """The parsed content of a container: where the ciphertexts belong, what they hold, their bytes."""

    backend: str
    params_id: str
    key_id: str
    layout: str
    levels: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]
    meta: Mapping[str, MetaValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Normalise to tuples and a read-only meta, and refuse anything :func:`dumps` could not write."""
        object.__setattr__(self, "levels", tuple(self.levels))
        object.__setattr__(self, "ciphertexts", tuple(self.ciphertexts))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        _check_record(self)

    def __len__(self) -> int:
        return len(self.ciphertexts)


def params_id(params: CkksParameters) -> str:
    """Id of a parameter set: sha256 (hex, first 16) of its canonical JSON, as the store computes it."""
    from cryptoface.store.base import params_fingerprint

    return params_fingerprint(params_to_json(params))


# -- live ciphertexts <-> record -------------------------------------------------------------------------
def pack_ciphertexts(
    backend: CkksBackend, cts: Sequence[Any], layout: str, *, meta: Mapping[str, MetaValue] | None = None
) -> CiphertextFile:
    """A record of ``cts`` (serialised by ``backend``) tagged with the backend's parameters and key set."""
    key_id = backend.key_id
    if key_id is None:
        raise ContainerError("the backend holds no key set; generate or load keys before packing ciphertexts")
    return CiphertextFile(
        backend=backend.name,
        params_id=params_id(backend.params),
        key_id=key_id,
        layout=layout,
        levels=tuple(int(backend.level(ct)) for ct in cts),
        ciphertexts=tuple(bytes(backend.serialize(ct)) for ct in cts),
        meta=dict(meta or {}),
    )


def unpack_ciphertexts(backend: CkksBackend, cf: CiphertextFile, *, layout: str | None = None) -> list[Any]:
    """The live ciphertexts of ``cf`` after checking backend, parameters, key set, layout and levels; each is
    screened first (:func:`cryptoface.backends.read_untrusted`), since a file may come from the other party."""
    if cf.backend != backend.name:
        raise ContainerError(f"the container holds {cf.backend} ciphertexts; this process runs the "
                             f"{backend.name} backend")
    mine = params_id(backend.params)
    if cf.params_id != mine:
        raise ContainerError(f"the container was made for other CKKS parameters (params id {cf.params_id}, "
                             f"these keys use {mine}); encrypt again under this key set")
    if cf.key_id != backend.key_id:
        raise ContainerError(f"the container is under key set {cf.key_id!r}, this backend holds "
                             f"{backend.key_id!r}; use the public keys of the client that encrypted it")
    if layout is not None and cf.layout != layout:
        raise ContainerError(f"expected a {layout!r} container, this one holds {cf.layout!r}")
    out = []
    for i, (data, level) in enumerate(zip(cf.ciphertexts, cf.levels, strict=True)):
        try:
            ct = read_untrusted(backend, data)
            found = int(backend.level(ct))
        except CryptoFaceError as exc:
            raise ContainerError(f"ciphertext {i} of the container is unreadable: {exc}") from exc
        if found != level:
            raise ContainerError(f"ciphertext {i} is at level {found}, the container header says {level}; "
                                 "the file is inconsistent: write it again")
        out.append(ct)
    return out


# -- record <-> bytes -------------------------------------------------------------------------------------
def _header(cf: CiphertextFile) -> bytes:
    head = {
        "backend": cf.backend,
        "params_id": cf.params_id,
        "key_id": cf.key_id,
        "layout": cf.layout,
        "levels": list(cf.levels),
        "meta": dict(cf.meta),
        "sizes": [len(c) for c in cf.ciphertexts],
        "sha256": [hashlib.sha256(c).hexdigest() for c in cf.ciphertexts],
    }
    raw = json.dumps(head, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_HEADER:
        raise ContainerError(f"the container header would be {len(raw)} bytes (limit {MAX_HEADER}); "
                             "shorten the meta or split the ciphertexts over several files")
    return _PREFIX.pack(MAGIC, CONTAINER_FORMAT, len(raw)) + raw


def dumps(cf: CiphertextFile) -> bytes:
    """The container's bytes (format :data:`CONTAINER_FORMAT`)."""
    return b"".join((_header(cf), *cf.ciphertexts))


def loads(data: bytes | bytearray | memoryview) -> CiphertextFile:
    """Parse container bytes; any defect raises :class:`ContainerError` (never another exception)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ContainerError(f"a container is bytes, got {type(data).__name__}")
    buf = memoryview(data).cast("B")
    if len(buf) < _PREFIX.size:
        raise ContainerError(f"the container is truncated ({len(buf)} bytes) or not a CryptoFace container")
    magic, version, length = _PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ContainerError("not a CryptoFace ciphertext container (bad magic); expected a file written by "
                             "cryptoface.container.save")
    if version != CONTAINER_FORMAT:
        newer = "a newer CryptoFace: upgrade this one" if version > CONTAINER_FORMAT else "an unknown writer"
        raise ContainerError(f"container format {version} (this CryptoFace reads {CONTAINER_FORMAT}); "
                             f"written by {newer}")
    if length > MAX_HEADER:
        raise ContainerError(f"the container header length ({length} bytes) exceeds {MAX_HEADER}; the file is corrupt")
    start = _PREFIX.size + length
    if start > len(buf):
        raise ContainerError(f"the container is truncated: its header needs {length} bytes, "
                             f"{len(buf) - _PREFIX.size} are there")
    head = _parse_header(bytes(buf[_PREFIX.size:start]))
    sizes, digests = head["sizes"], head["sha256"]
    if start + sum(sizes) != len(buf):
        raise ContainerError(f"the container is truncated or has trailing bytes: the header lists "
                             f"{sum(sizes)} payload bytes, the file has {len(buf) - start}")
    payloads, offset = [], start
    for i, (size, digest) in enumerate(zip(sizes, digests, strict=True)):
        part = bytes(buf[offset:offset + size])
        if hashlib.sha256(part).hexdigest() != digest:
            raise ContainerError(f"ciphertext {i} of the container is corrupt (sha256 mismatch); copy or "
                                 "produce the file again")
        payloads.append(part)
        offset += size
    return CiphertextFile(head["backend"], head["params_id"], head["key_id"], head["layout"],
                          tuple(head["levels"]), tuple(payloads), head["meta"])


def save(path: str | os.PathLike[str], cf: CiphertextFile) -> None:
    """Write ``cf`` to ``path`` atomically (a temporary file in the same folder, then ``os.replace``)."""
    target = Path(path)
    header = _header(cf)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ContainerError(f"cannot write the container {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            for part in cf.ciphertexts:  # no joined copy of all payloads
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # ciphertexts are not secret; readable by the next stage's user
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ContainerError(f"cannot write the container {path}: {exc.strerror or exc}") from exc
        raise


def load(path: str | os.PathLike[str]) -> CiphertextFile:
    """Read and parse the container at ``path`` (:class:`ContainerError` when missing or malformed)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ContainerError(f"cannot read the container {path}: {exc.strerror or exc}") from exc
    try:
        return loads(data)
    except ContainerError as exc:
        raise ContainerError(f"{path}: {exc}") from exc


# -- validation -------------------------------------------------------------------------------------------
def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        head = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSON, UTF-8 and int-size errors are ValueErrors
        raise ContainerError(f"the container header is not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(head, dict):
        raise ContainerError(f"the container header is a JSON {type(head).__name__}, not an object; "
                             "the file is corrupt")
    missing, unknown = _FIELDS - set(head), set(head) - _FIELDS
    if missing or unknown:
        raise ContainerError(f"the container header lacks {sorted(missing)} / has unknown {sorted(unknown)} "
                             "fields; it was not written by this CryptoFace version")
    for name in ("backend", "params_id", "key_id", "layout"):
        if type(head[name]) is not str:
            raise ContainerError(f"the container header field {name!r} should be a string")
    count = _int_list(head, "levels", MAX_LEVEL)
    sizes = _int_list(head, "sizes", 1 << 62)
    digests = head["sha256"]
    if not isinstance(digests, list) or not all(type(d) is str and _HEX64.fullmatch(d) for d in digests):
        raise ContainerError("the container header field 'sha256' should list 64-digit hex digests")
    if not len(count) == len(sizes) == len(digests):
        raise ContainerError(f"the container header lists {len(count)} levels, {len(sizes)} sizes and "
                             f"{len(digests)} digests; the file is corrupt")
    if not isinstance(head["meta"], dict):
        raise ContainerError("the container header field 'meta' should be an object")
    return head


def _int_list(head: dict[str, Any], name: str, bound: int) -> list[int]:
    value = head[name]
    if (not isinstance(value, list) or len(value) > MAX_CIPHERTEXTS
            or not all(type(v) is int and 0 <= v < bound for v in value)):
        raise ContainerError(f"the container header field {name!r} should list at most {MAX_CIPHERTEXTS} "
                             f"integers in 0..{bound - 1}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate field")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _check_record(cf: CiphertextFile) -> None:
    """Every field of ``cf`` within the format's rules (shared by construction and parsing)."""
    for name in ("backend", "params_id", "key_id"):
        value = getattr(cf, name)
        if type(value) is not str or not _ID.fullmatch(value):
            raise ContainerError(f"container field {name!r} should be 1-128 letters, digits or '_.-', "
                                 f"got {value!r:.80}")
    if cf.layout not in LAYOUTS:
        raise ContainerError(f"unknown container layout {cf.layout!r}; one of {', '.join(LAYOUTS)}")
    n = len(cf.ciphertexts)
    if not 1 <= n <= MAX_CIPHERTEXTS:
        raise ContainerError(f"a container holds 1 to {MAX_CIPHERTEXTS} ciphertexts, not {n}")
    if len(cf.levels) != n:
        raise ContainerError(f"{len(cf.levels)} levels for {n} ciphertexts")
    if not all(type(v) is int and 0 <= v < MAX_LEVEL for v in cf.levels):
        raise ContainerError(f"container levels should be integers in 0..{MAX_LEVEL - 1}")
    if not all(isinstance(c, bytes) for c in cf.ciphertexts):
        raise ContainerError("container ciphertexts should be bytes (backend.serialize output)")
    _check_meta(cf.meta)


def _check_meta(meta: Mapping[str, Any]) -> None:
    if len(meta) > MAX_META:
        raise ContainerError(f"container meta has {len(meta)} entries (at most {MAX_META})")
    for key, value in meta.items():
        if type(key) is not str or not _NAME.fullmatch(key):
            raise ContainerError(f"container meta key {key!r} should be 1-64 letters, digits or '_.-'")
        if type(value) is str:
            ok = len(value) <= MAX_META_TEXT
        elif type(value) is int:
            ok = -(1 << 63) <= value < 1 << 63
        elif type(value) is float:
            ok = math.isfinite(value)
        else:
            ok = False
        if not ok:
            raise ContainerError(f"container meta {key!r} should be a string of at most {MAX_META_TEXT} "
                                 f"characters, a 64-bit integer or a finite float, got {type(value).__name__}")


__all__ = [
    "CONTAINER_FORMAT",
    "LAYOUTS",
    "CiphertextFile",
    "ContainerError",
    "dumps",
    "load",
    "loads",
    "pack_ciphertexts",
    "params_id",
    "save",
    "unpack_ciphertexts",
]
