"""Ciphertext container files: round trips, refusals of other key sets/parameters/layouts, hostile bytes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
import struct

import numpy as np
import pytest

from cryptoface import container
from cryptoface.backends import backend_class, create_backend
from cryptoface.backends.protocol import CkksParameters
from cryptoface.container import (
    CONTAINER_FORMAT,
    ContainerError,
    dumps,
    load,
    loads,
    pack_ciphertexts,
    save,
    unpack_ciphertexts,
)
from cryptoface.errors import CiphertextError

PARAMS = CkksParameters(log_ring=12, levels=8)
SEED = 20261203


@pytest.fixture(scope="module")
def sim():
    be = create_backend("simulator", PARAMS)
    be.generate_keys([1])
    return be


def _cts(be, n=2):
    return [be.encrypt(np.arange(8.0) + i, PARAMS.levels - i) for i in range(n)]


def _header(data: bytes) -> dict:
    (length,) = struct.unpack_from("<I", data, 6)
    return json.loads(data[10:10 + length])


def _with_header(data: bytes, head: dict | bytes, version: int = CONTAINER_FORMAT) -> bytes:
    (length,) = struct.unpack_from("<I", data, 6)
    raw = head if isinstance(head, bytes) else json.dumps(head).encode()
    return b"CFCT" + struct.pack("<HI", version, len(raw)) + raw + data[10 + length:]


def test_round_trip_keeps_values_levels_and_meta(sim, tmp_path):
    cts = _cts(sim, 3)
    cf = pack_ciphertexts(sim, cts, "image-monolithic", meta={"resolution": 64, "pair": "7", "scale": 0.5})
    assert cf.levels == (8, 7, 6) and len(cf) == 3
    data = dumps(cf)
    assert data[:4] == b"CFCT" and struct.unpack_from("<H", data, 4) == (CONTAINER_FORMAT,)
    back = loads(data)
    assert back == cf and dict(back.meta) == {"resolution": 64, "pair": "7", "scale": 0.5}
    save(tmp_path / "x.cfct", cf)
    assert load(tmp_path / "x.cfct") == cf
    assert [p.name for p in tmp_path.iterdir()] == ["x.cfct"]  # no temporary file left
    out = unpack_ciphertexts(sim, load(tmp_path / "x.cfct"), layout="image-monolithic")
    for a, b in zip(cts, out, strict=True):
        assert sim.level(a) == sim.level(b)
        assert np.array_equal(sim.decrypt(a), sim.decrypt(b))


def test_header_is_the_documented_json(sim):
    data = dumps(pack_ciphertexts(sim, _cts(sim), "template", meta={"stride": 1}))
    head = _header(data)
    assert set(head) == {"backend", "params_id", "key_id", "layout", "levels", "meta", "sizes", "sha256"}
    assert head["params_id"] == container.params_id(PARAMS) and head["key_id"] == sim.key_id
    offset = 10 + struct.unpack_from("<I", data, 6)[0]
    for size, digest in zip(head["sizes"], head["sha256"], strict=True):
        assert hashlib.sha256(data[offset:offset + size]).hexdigest() == digest
        offset += size
    assert offset == len(data)


def test_a_server_backend_from_public_keys_unpacks(sim):
    server = backend_class("simulator").from_public_keys(PARAMS, sim.export_evaluation_keys())
    cts = unpack_ciphertexts(server, loads(dumps(pack_ciphertexts(sim, _cts(sim), "image-units"))))
    assert len(cts) == 2 and not server.has_secret_key


def test_refuses_other_key_sets_parameters_backends_and_layouts(sim):
    cf = pack_ciphertexts(sim, _cts(sim), "scores")
    other = create_backend("simulator", PARAMS)
    other.generate_keys([])
    with pytest.raises(ContainerError, match="key set"):
        unpack_ciphertexts(other, cf)
    bigger = create_backend("simulator", CkksParameters(log_ring=12, levels=9))
    bigger.generate_keys([])
    with pytest.raises(ContainerError, match="other CKKS parameters"):
        unpack_ciphertexts(bigger, cf)
    with pytest.raises(ContainerError, match="openfhe ciphertexts"):
        unpack_ciphertexts(sim, dataclasses.replace(cf, backend="openfhe"))
    with pytest.raises(ContainerError, match="expected a 'template' container"):
        unpack_ciphertexts(sim, cf, layout="template")
    with pytest.raises(ContainerError, match="header says"):
        unpack_ciphertexts(sim, dataclasses.replace(cf, levels=(1, 1)))
    assert issubclass(ContainerError, CiphertextError)


def test_refuses_records_it_could_not_write(sim):
    cts = _cts(sim)
    with pytest.raises(ContainerError, match="unknown container layout"):
        pack_ciphertexts(sim, cts, "pixels")
    with pytest.raises(ContainerError, match="1 to"):
        pack_ciphertexts(sim, [], "template")
    for bad in ({"x": [1]}, {"x": True}, {"x": float("nan")}, {"": 1}, {"a b": 1}, {"x": "y" * 2000}):
        with pytest.raises(ContainerError, match="meta"):
            pack_ciphertexts(sim, cts, "template", meta=bad)
    with pytest.raises(ContainerError, match="no key set"):
        pack_ciphertexts(create_backend("simulator", PARAMS), [], "template")


def test_load_and_save_errors_are_container_errors(tmp_path, sim):
    with pytest.raises(ContainerError, match="cannot read"):
        load(tmp_path / "missing.cfct")
    with pytest.raises(ContainerError, match="cannot write"):
        save(tmp_path / "no" / "dir.cfct", pack_ciphertexts(sim, _cts(sim), "template"))
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ContainerError, match=r"junk.*bad magic"):
        load(tmp_path / "junk")


def test_crafted_headers_are_refused_with_a_reason(sim):
    data = dumps(pack_ciphertexts(sim, _cts(sim), "template"))
    head = _header(data)
    cases = {
        "newer CryptoFace": _with_header(data, head, version=CONTAINER_FORMAT + 1),
        "lacks": _with_header(data, {k: v for k, v in head.items() if k != "meta"}),
        "unknown": _with_header(data, {**head, "extra": 1}),
        "'levels' should list": _with_header(data, {**head, "levels": [True, 7]}),
        "'sizes' should list": _with_header(data, {**head, "sizes": [-1, 5]}),
        "3 levels, 2 sizes": _with_header(data, {**head, "levels": [8, 8, 8]}),
        "digests": _with_header(data, {**head, "sha256": ["00", "11"]}),
        "not valid JSON": _with_header(data, b'{"a": 1, "a": 2}'),
        "NaN": _with_header(data, json.dumps({**head, "meta": {"x": float("nan")}}).encode()),
        "JSON list": _with_header(data, b"[1, 2]"),
        "nested": _with_header(data, b"[" * 100_000),
        "exceeds": b"CFCT" + struct.pack("<HI", 1, container.MAX_HEADER + 1) + data[10:],
        "truncated: its header": data[:40],
        "trailing": data + b"\0",
        "sha256 mismatch": data[:-1] + bytes([data[-1] ^ 1]),
        "bad magic": b"CFCX" + data[4:],
        "meta 'x'": _with_header(data, {**head, "meta": {"x": None}}),
        "layout": _with_header(data, {**head, "layout": "pixels"}),
        "'key_id'": _with_header(data, {**head, "key_id": "../../etc"}),
    }
    for reason, bad in cases.items():
        with pytest.raises(ContainerError) as info:
            loads(bad)
        assert reason.lower() in str(info.value).lower() or reason == "nested", (reason, str(info.value))
    with pytest.raises(ContainerError, match="bytes"):
        loads("CFCT")  # type: ignore[arg-type]
    with pytest.raises(ContainerError):
        _ = loads(_with_header(data, {**head, "sizes": [1 << 61, 1 << 61]}))


def _mutate(data: bytes, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return data[: rng.randrange(len(data))]
    if roll < 0.5:  # bit flips, mostly in the prefix and header where they parse differently
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            hi = 10 + struct.unpack_from("<I", data, 6)[0] if rng.random() < 0.8 else len(data)
            i = rng.randrange(min(hi, len(data)))
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if roll < 0.65:  # a random header length
        return data[:6] + struct.pack("<I", rng.choice([0, 1, 9, rng.randrange(1 << 32)])) + data[10:]
    if roll < 0.85:  # a header value replaced by a hostile one
        head = _header(data)
        key = rng.choice(sorted(head))
        head[key] = rng.choice([None, -1, 2**70, "x" * 300, [], [1 << 62] * 3, {"a": []}, 1.5, True,
                                [rng.randrange(-5, 5) for _ in range(rng.randint(0, 4))]])
        return _with_header(data, head)
    if roll < 0.95:  # bytes inserted or removed
        i = rng.randrange(len(data))
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 8))) + data[i + rng.randint(0, 8):]
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))


def test_fuzzed_bytes_only_ever_raise_container_error(sim):
    rng = random.Random(SEED)
    data = dumps(pack_ciphertexts(sim, _cts(sim), "image-units", meta={"count": 2, "name": "a"}))
    refused = 0
    for _ in range(3000):
        bad = _mutate(data, rng)
        try:
            cf = loads(bad)
            unpack_ciphertexts(sim, cf)
        except ContainerError:
            refused += 1
    assert refused >= 2900  # a few flips land in the meta's text and still parse


def test_openfhe_round_trip_and_refusal():
    pytest.importorskip("openfhe", reason="openfhe is importable only in .venv-openfhe (scripts/openfhe-venv.sh)")
    params = CkksParameters(log_ring=14, levels=4)
    be = create_backend("openfhe", params)
    be.generate_keys([])
    cts = [be.encrypt(np.arange(4.0), 4), be.encrypt(np.ones(4), 3)]
    cf = loads(dumps(pack_ciphertexts(be, cts, "template", meta={"stride": 1})))
    server = backend_class("openfhe").from_public_keys(params, be.export_evaluation_keys())
    out = unpack_ciphertexts(server, cf, layout="template")
    assert [server.level(c) for c in out] == [4, 3]
    assert np.allclose(be.decrypt(out[0])[:4], np.arange(4.0), atol=1e-3)
    rng = random.Random(SEED + 1)
    data = dumps(cf)
    for _ in range(60):  # payload flips are caught by the digest before OpenFHE parses anything
        with contextlib.suppress(ContainerError):
            unpack_ciphertexts(be, loads(_mutate(data, rng)))
