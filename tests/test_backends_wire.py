"""The shared byte framing (cryptoface.backends.wire) on its own: strict parsing into the caller's error."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

from cryptoface.backends import wire
from cryptoface.errors import CiphertextError, MissingKeyError

FP = "f" * 16
SCHEMA = {"level": int, "pending": bool}


def read(data: object, **overrides: object) -> wire.Frame:
    options = {"payloads": 2, "fp": FP, "error": CiphertextError, "what": "test ciphertext", "key_id": None}
    options.update(overrides)
    return wire.unpack(data, wire.DESILO, "ciphertext", SCHEMA, **options)


def blob(**fields: object) -> bytes:
    return wire.pack(wire.DESILO, "ciphertext", "k1", FP, {"level": 3, "pending": False, **fields}, b"abc", b"")


def with_header(header: dict, payload: bytes = b"abc") -> bytes:
    head = json.dumps(header).encode()
    return wire.DESILO + struct.pack("<I", len(head)) + head + payload


def good_header(**changes: object) -> dict:
    header = {"v": 1, "kind": "ciphertext", "key_id": "k1", "fp": FP, "level": 3, "pending": False,
              "sizes": [3, 0], "crc": [zlib.crc32(b"abc"), zlib.crc32(b"")]}
    header.update(changes)
    return header


def test_round_trip_keeps_fields_and_payloads():
    frame = read(blob(), key_id="k1")
    assert frame.key_id == "k1"
    assert dict(frame.fields) == {"level": 3, "pending": False}
    assert frame.payloads == (b"abc", b"")
    assert read(bytearray(blob())).payloads == (b"abc", b"")
    assert read(memoryview(blob())).payloads == (b"abc", b"")
    assert read(with_header(good_header())).payloads == (b"abc", b"")  # independent writer, same layout


@pytest.mark.parametrize(
    "changes",
    [
        {"sizes": "3,0"}, {"sizes": [3]}, {"sizes": [-3, 6]}, {"sizes": [3.0, 0]}, {"sizes": [True, 2]},
        {"sizes": [2**70, 0]}, {"crc": [0, 0]}, {"crc": None}, {"v": 0}, {"v": "1"}, {"kind": "secret"},
        {"kind": None}, {"fp": "0" * 16}, {"key_id": 5}, {"level": "3"}, {"level": False}, {"level": 3.5},
        {"pending": 1}, {"pending": None}, {"extra": 1},
    ],
    ids=repr,
)
def test_bad_header_fields_raise_the_callers_error(changes):
    with pytest.raises(CiphertextError):
        read(with_header(good_header(**changes)))


@pytest.mark.parametrize("field", ["v", "kind", "key_id", "fp", "sizes", "crc", "level", "pending"])
def test_missing_fields_are_refused(field):
    header = good_header()
    del header[field]
    with pytest.raises(CiphertextError):
        read(with_header(header))


@pytest.mark.parametrize(
    "data",
    [b"", wire.DESILO, wire.DESILO + b"\xff\xff\xff\xff{}", wire.DESILO + struct.pack("<I", 2) + b"[]",
     wire.DESILO + struct.pack("<I", 4) + b'"s"x', wire.DESILO + struct.pack("<I", 3) + b"\xff\xfe{",
     wire.OPENFHE + b"\0" * 20, None, "text", 7],
    ids=repr,
)
def test_malformed_bytes_raise_the_callers_error(data):
    with pytest.raises(MissingKeyError):
        read(data, error=MissingKeyError)


def test_payload_corruption_and_length_are_checked():
    good = blob()
    with pytest.raises(CiphertextError, match="checksum"):
        read(good[:-3] + b"abd")
    with pytest.raises(CiphertextError, match="trailing"):
        read(good + b"x")
    with pytest.raises(CiphertextError, match="truncated"):
        read(good[:-1])


def test_key_id_and_fingerprint_mismatch_name_the_cause():
    with pytest.raises(MissingKeyError, match="another key set"):
        read(blob(), key_id="k2", error=MissingKeyError)
    with pytest.raises(MissingKeyError, match="other CKKS parameters"):
        read(blob(), fp="0" * 16, error=MissingKeyError)
    with pytest.raises(CiphertextError, match="desilofhe"):
        wire.unpack(blob(), wire.OPENFHE, "ciphertext", SCHEMA, payloads=2, fp=FP, error=CiphertextError,
                    what="OpenFHE ciphertext")


def test_pack_refuses_reserved_field_names():
    with pytest.raises(ValueError):
        wire.pack(wire.DESILO, "ciphertext", "k1", FP, {"sizes": 1})


def test_rotation_names_and_key_entry():
    keys = {"public": b"", "relin": b"", "rotation:1": b"", "rotation:-2": b""}
    assert wire.rotation_names(keys, 8) == {"rotation:1": 1, "rotation:-2": 6}
    for bad in ("rotation:x", "rotation:", "rotation:+1", "rotation:1e3", "rotation:١", "secret", 5):
        with pytest.raises(MissingKeyError):
            wire.rotation_names({**keys, bad: b""}, 8)
    assert wire.key_entry(keys, "public") == b""
    with pytest.raises(MissingKeyError):
        wire.key_entry({"relin": b""}, "public")
    with pytest.raises(MissingKeyError):
        wire.key_entry([("public", b"")], "public")


def test_unpack_without_copy_gives_views_into_the_input_and_still_checks_them():
    """A server checks a whole key set before loading it: views hold its bytes once, copies held them twice
    (the full-size load test peaked at 3x a key set's stored bytes while reading one)."""
    data = blob()
    frame = read(data, copy=False)
    assert all(isinstance(p, memoryview) and p.obj is data for p in frame.payloads)
    assert [bytes(p) for p in frame.payloads] == [b"abc", b""]
    assert all(isinstance(p, bytes) for p in read(data).payloads)  # the default is a copy, as before
    corrupt = data[:-1] + b"x"
    with pytest.raises(CiphertextError, match="checksum"):
        read(corrupt, copy=False)
