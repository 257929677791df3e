"""Crafted OpenFHE bytes with a valid checksum must not take the server down.

The attack: take a real ciphertext or key, zero one RNS modulus inside OpenFHE's payload and recompute the wire
CRC. OpenFHE's own deserialiser then dies of SIGFPE, and before screening that killed the whole server process.
The precondition test shows the crafted bytes really kill a plain process, so the others cannot pass vacuously.
Runs where OpenFHE imports (``.venv-openfhe``; ``scripts/test.sh`` runs it there).
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openfhe")

from cryptoface.backends import create_backend, read_untrusted
from cryptoface.backends.protocol import CkksParameters
from cryptoface.client import ClientKeys
from cryptoface.errors import CiphertextError, MissingKeyError
from cryptoface.service.proof import answer_challenge
from test_service_support import Server, b64

PARAMS = CkksParameters(log_ring=14, levels=4)
PJSON = {k: getattr(PARAMS, k) for k in ("log_ring", "levels", "scale_bits", "first_mod_bits", "special_mod_bits",
                                          "key_switch_digits")}
MODULUS_AT = 264  # offset of an RNS modulus in a ciphertext payload at PARAMS (checked by the precondition test)
READERS = {"ciphertext": ["DeserializeCiphertextString"],
           "public": ["DeserializeCryptoContextString", "DeserializePublicKeyString"],
           "relin": ["DeserializeEvalMultKeyString"], "rotation:1": ["DeserializeEvalKeyMapString"]}


def _split(blob: bytes) -> tuple[bytes, dict, list[bytes]]:
    n = struct.unpack_from("<I", blob, 6)[0]
    header, body, parts, at = json.loads(blob[10:10 + n]), blob[10 + n:], [], 0
    for size in header["sizes"]:
        parts.append(body[at:at + size])
        at += size
    return blob[:6], header, parts


def _join(magic: bytes, header: dict, parts: list[bytes]) -> bytes:
    header = {**header, "sizes": [len(p) for p in parts], "crc": [zlib.crc32(p) for p in parts]}
    head = json.dumps(header).encode()
    return magic + struct.pack("<I", len(head)) + head + b"".join(parts)


@pytest.fixture(scope="module")
def client() -> ClientKeys:
    return ClientKeys.generate("openfhe", PARAMS, extra_rotations=[1])


@pytest.fixture(scope="module")
def modulus(client) -> bytes:
    be = client.backend
    _, _, (payload,) = _split(be.serialize(be.encrypt(np.arange(8.0))))
    return payload[MODULUS_AT:MODULUS_AT + 8]


def craft(blob: bytes, modulus: bytes, part: int = -1) -> bytes:
    """``blob`` with the modulus zeroed in payload ``part`` (default: the last) and every checksum made right."""
    magic, header, parts = _split(blob)
    p = bytearray(parts[part])
    at = bytes(p).find(modulus)
    assert at >= 0, "the modulus is not in this payload: OpenFHE's layout changed, update MODULUS_AT"
    p[at:at + 8] = bytes(8)
    parts[part] = bytes(p)
    return _join(magic, header, parts)


def _dies_in_plain_process(reader: str, payload: bytes, tmp_path: Path) -> int:
    f = tmp_path / "payload.bin"
    f.write_bytes(payload)
    code = f"import openfhe; openfhe.{reader}(open({str(f)!r}, 'rb').read(), openfhe.BINARY)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode


def _samples(client: ClientKeys) -> dict[str, bytes]:
    be = client.backend
    keys = dict(client.evaluation_keys())
    return {"ciphertext": be.serialize(be.encrypt(np.arange(8.0))), "public": keys["public"],
            "relin": keys["relin"], "rotation:1": keys["rotation:1"]}


def test_crafted_bytes_kill_a_plain_openfhe_process(client, modulus, tmp_path):
    for kind, blob in _samples(client).items():
        for i, reader in enumerate(READERS[kind]):
            _, _, parts = _split(craft(blob, modulus, i))
            assert _dies_in_plain_process(reader, parts[i], tmp_path) < 0, (kind, reader)


def test_screen_refuses_what_would_kill_the_process_and_keeps_working(client, modulus):
    cls = type(client.backend)
    for kind, blob in _samples(client).items():
        cls.screen(PARAMS, kind, blob)  # genuine bytes pass
        for i in range(len(READERS[kind])):
            error = CiphertextError if kind == "ciphertext" else MissingKeyError
            with pytest.raises(error, match="killed the parser"):
                cls.screen(PARAMS, kind, craft(blob, modulus, i))
        cls.screen(PARAMS, kind, blob)  # the child was restarted


def test_screen_refuses_a_length_that_asks_for_terabytes(client):
    be = client.backend
    magic, header, (payload,) = _split(be.serialize(be.encrypt(np.arange(8.0))))
    refused = 0
    for at in range(300, 420, 8):  # vector lengths of the cereal encoding sit here; each crafted one is refused
        p = bytearray(payload)
        p[at:at + 8] = struct.pack("<Q", 1 << 40)
        try:
            type(be).screen(PARAMS, "ciphertext", _join(magic, header, [bytes(p)]))
        except CiphertextError:
            refused += 1
    assert refused > 0
    type(be).screen(PARAMS, "ciphertext", be.serialize(be.encrypt(np.arange(8.0))))


def test_the_client_screens_what_the_server_sends(client, modulus):
    be = client.backend
    evil = craft(be.serialize(be.encrypt(np.arange(8.0))), modulus)
    with pytest.raises(CiphertextError):
        read_untrusted(be, evil)


def test_crafted_openfhe_bytes_over_http_are_4xx_and_the_server_lives(client, modulus, tmp_path):
    srv = Server(tmp_path / "screen.db")
    try:
        _, http = srv.tenant("screened")
        samples = _samples(client)
        before = srv.snapshot()
        r = http.post("/v1/keysets", json={"backend": "openfhe", "params": PJSON,
                                           "keys": {"public": b64(craft(samples["public"], modulus, 0))}})
        assert r.status_code == 400, r.text
        r = http.post("/v1/keysets", json={"backend": "openfhe", "params": PJSON,
                                           "keys": {"public": b64(craft(samples["public"], modulus, 1))}})
        assert r.status_code == 400, r.text
        assert srv.snapshot() == before
        r = http.post("/v1/keysets", json={"backend": "openfhe", "params": PJSON,
                                           "keys": {"public": b64(samples["public"])}})
        assert r.status_code == 201, r.text
        ch = r.json()["challenge"]
        values = client.backend.decrypt(client.backend.deserialize(base64.b64decode(ch["ciphertext"])))
        r = http.post(f"/v1/keysets/{client.key_id}/proof",
                      json={"proof": answer_challenge(values, ch["count"], ch["nonce"])})
        assert r.status_code == 200, r.text
        before = srv.snapshot()
        for kind in ("relin", "rotation:1"):
            r = http.put(f"/v1/keysets/{client.key_id}/keys/{kind}", content=craft(samples[kind], modulus),
                         headers={"content-type": "application/octet-stream"})
            assert r.status_code == 400, r.text
        evil = b64(craft(samples["ciphertext"], modulus))
        r = http.post(f"/v1/keysets/{client.key_id}/subjects",
                      json={"subject": "mallory", "probes": [{"ciphertext": evil}]})
        assert r.status_code == 400, r.text
        assert srv.snapshot() == before
        assert srv.anonymous().get("/v1/health").status_code == 200
        r = http.put(f"/v1/keysets/{client.key_id}/keys/relin", content=samples["relin"],
                     headers={"content-type": "application/octet-stream"})
        assert r.status_code == 201, r.text
    finally:
        srv.stop()


def test_screening_needs_no_other_backend_than_openfhe():
    sim = create_backend("simulator", PARAMS)
    sim.generate_keys([])
    type(sim).screen(PARAMS, "ciphertext", b"anything")  # pure Python parsers: nothing to vet out of process
