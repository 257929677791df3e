"""Conformance of every importable CKKS backend with the protocol (compared with numpy / the simulator).

Runs in whatever interpreter pytest runs in: the simulator always, desilofhe in ``.venv``, OpenFHE in
``.venv-openfhe`` (``scripts/openfhe-venv.sh``). A backend that cannot be imported here is skipped with
the reason. Parameters are test-sized (N = 2^14, 4 levels, 3 rotation keys): every real backend accepts
them (desilofhe picks N = 2^14 for 3-6 levels; OpenFHE runs them with HEStd_NotSet below N = 2^16).

``CRYPTOFACE_TEST_DEVICE=gpu`` runs the suite on desilofhe's CUDA mode (``scripts/gpu_session.sh`` does, on a
lent GPU; the backends without a GPU mode are skipped then). CI runs the same backend code on the CPU, under
desilofhe 2.0 and, in ``scripts/test.sh``'s GPU-path stage, under the CUDA build 1.17 in CPU mode.
"""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from cryptoface.backends import BACKENDS, available_backends, backend_class, create_backend, wire
from cryptoface.backends.protocol import CkksBackend, CkksParameters
from cryptoface.errors import CiphertextError, CryptoFaceError, MissingKeyError, ParameterError

PARAMS = CkksParameters(log_ring=14, levels=4)
STEPS = (1, 3, -2)
ATOL = 1e-4  # OpenFHE FIXEDMANUAL at 40-bit scale gives ~1e-6 per op; desilofhe and the simulator far less

_AVAILABLE = set(available_backends())
BACKEND_PARAMS = [
    pytest.param(name, id=name, marks=pytest.mark.skipif(name not in _AVAILABLE, reason=_reason))
    for name, _reason in (
        (n, f"backend {n!r} is not importable in this interpreter ({BACKENDS[n][2] or 'built in'})") for n in BACKENDS
    )
]


DEVICE = os.environ.get("CRYPTOFACE_TEST_DEVICE", "cpu")
GPU_BACKENDS = ("desilofhe",)


def device_options(name: str) -> dict[str, str]:
    """The options that put backend ``name`` on :data:`DEVICE` (skips a backend without that device)."""
    if DEVICE == "cpu":
        return {}
    if name not in GPU_BACKENDS:
        pytest.skip(f"backend {name!r} has no {DEVICE} mode")
    return {"device": DEVICE}


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def client(request) -> CkksBackend:
    backend = create_backend(request.param, PARAMS, **device_options(request.param))
    backend.generate_keys(STEPS)
    return backend


@pytest.fixture(scope="module")
def other_client(client) -> CkksBackend:
    name = _registry_name(client)
    backend = create_backend(name, PARAMS, **device_options(name))
    backend.generate_keys([1])
    return backend


@pytest.fixture(scope="module")
def server(client) -> CkksBackend:
    name = _registry_name(client)
    return backend_class(name).from_public_keys(PARAMS, client.export_evaluation_keys(), **device_options(name))


def _registry_name(backend: CkksBackend) -> str:
    for name, (module, cls, _hint) in BACKENDS.items():
        if type(backend).__module__ == module and type(backend).__name__ == cls:
            return name
    raise AssertionError(f"{type(backend)} is not in the registry")


@pytest.fixture(scope="module")
def data(client) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = client.slots
    return {"x": rng.uniform(-1, 1, n), "y": rng.uniform(-1, 1, n), "w": rng.uniform(-1, 1, (8, n))}


def close(got: np.ndarray, want: np.ndarray, atol: float = ATOL) -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


# -- basics -------------------------------------------------------------------------------------------
def test_protocol_shape(client):
    assert isinstance(client, CkksBackend)
    assert client.slots == PARAMS.slots
    assert client.has_secret_key
    assert client.rotation_steps() == frozenset({1, 3, PARAMS.slots - 2})


def test_encrypt_decrypt_round_trip(client, data):
    ct = client.encrypt(data["x"])
    assert client.level(ct) == PARAMS.levels
    close(client.decrypt(ct), data["x"])
    short = client.encrypt(data["x"][:10], level=2)
    assert client.level(short) == 2
    out = client.decrypt(short)
    assert out.shape == (PARAMS.slots,) and out.dtype == np.float64
    close(out[:10], data["x"][:10])
    close(out[10:], 0.0)


def test_add_sub_add_plain(client, data):
    x, y = data["x"], data["y"]
    a, b = client.encrypt(x), client.encrypt(y)
    close(client.decrypt(client.add(a, b)), x + y)
    close(client.decrypt(client.sub(a, b)), x - y)
    close(client.decrypt(client.add_plain(a, y)), x + y)


def test_mul_plain_then_rescale(client, data):
    x, y = data["x"], data["y"]
    ct = client.encrypt(x)
    prod = client.mul_plain(ct, client.encode(y, PARAMS.levels))
    assert client.level(prod) == PARAMS.levels  # not rescaled implicitly
    with pytest.raises(CiphertextError):
        client.decrypt(prod)
    out = client.rescale(prod)
    assert client.level(out) == PARAMS.levels - 1
    close(client.decrypt(out), x * y)


def test_mul_ct_ct_then_rescale(client, data):
    x, y = data["x"], data["y"]
    out = client.rescale(client.mul(client.encrypt(x), client.encrypt(y)))
    assert client.level(out) == PARAMS.levels - 1
    close(client.decrypt(out), x * y)


def test_mul_scalar(client, data):
    out = client.rescale(client.mul_scalar(client.encrypt(data["x"]), -1.75))
    assert client.level(out) == PARAMS.levels - 1
    close(client.decrypt(out), -1.75 * data["x"])


def test_compact_plaintexts_multiply_like_full_ones(client, data):
    """``encode(compact=True)`` (what a plaintext cache keeps past its budget) is never larger and gives the same
    product; ``synchronize`` returns once the product is done."""
    x, y = data["x"], data["y"]
    ct = client.encrypt(x)
    full, compact = client.encode(y, PARAMS.levels), client.encode(y, PARAMS.levels, compact=True)
    assert 0 < client.plaintext_nbytes(compact) <= client.plaintext_nbytes(full)
    out = client.multiply_accumulate([ct, ct], [full, compact])
    client.synchronize()
    close(client.decrypt(out), 2 * x * y)


def test_backends_without_a_gpu_mode_refuse_it():
    for name in sorted(_AVAILABLE):
        if name not in GPU_BACKENDS:
            with pytest.raises(ParameterError, match="CPU only"):
                create_backend(name, PARAMS, device="gpu")
        with pytest.raises(ParameterError):
            create_backend(name, PARAMS, device="tpu")


def test_multiply_accumulate_of_eight(client, data):
    x, w = data["x"], data["w"]
    cts = [client.encrypt(np.roll(x, i)) for i in range(8)]
    pts = [client.encode(w[i], PARAMS.levels) for i in range(8)]
    out = client.multiply_accumulate(cts, pts)
    assert client.level(out) == PARAMS.levels - 1
    want = sum(np.roll(x, i) * w[i] for i in range(8))
    close(client.decrypt(out), want, atol=8 * ATOL)
    with pytest.raises(ValueError):
        client.multiply_accumulate(cts, pts[:3])
    with pytest.raises(ValueError):
        client.multiply_accumulate(cts[:3], pts)
    with pytest.raises(ValueError):
        client.multiply_accumulate([], [])


def test_multiply_accumulate_pulls_plaintexts_lazily(client, data, monkeypatch):
    # The engine encodes each weight plaintext right before its product: a generator must give the same
    # sum, and no plaintext may be encoded before the previous term was multiplied.
    x, w = data["x"], data["w"]
    cts = [client.encrypt(np.roll(x, i)) for i in range(5)]
    events = []
    mul_plain = client.mul_plain
    monkeypatch.setattr(client, "mul_plain", lambda ct, pt: events.append("mul") or mul_plain(ct, pt))

    def lazily():
        for i in range(5):
            events.append("encode")
            yield client.encode(w[i], PARAMS.levels)

    out = client.multiply_accumulate(cts, lazily())
    monkeypatch.undo()
    assert events == ["encode", "mul"] * 5
    close(client.decrypt(out), sum(np.roll(x, i) * w[i] for i in range(5)), atol=5 * ATOL)
    with pytest.raises(ValueError):
        client.multiply_accumulate(cts, (client.encode(w[i], PARAMS.levels) for i in range(2)))


def test_thread_safe_backends_survive_concurrent_calls(client, data):
    # The engine runs giant steps on two threads over shared baby ciphertexts when a backend declares
    # thread_safe. Check the claim: two threads encoding, multiply-accumulating and rotating one shared
    # ciphertext must give the serial results. (desilofhe declares False: this crashed it, see its module.)
    import threading

    assert isinstance(client.thread_safe, bool)
    if not client.thread_safe:
        pytest.skip(f"{client.name} declares thread_safe = False; the engine then runs one thread")
    x, w = data["x"], data["w"]
    ct = client.encrypt(x)
    step = min(client.rotation_steps())
    results: dict[int, list[np.ndarray]] = {}

    def work(t: int) -> None:
        out = []
        for i in range(6):
            weights = [w[(t + i + j) % len(w)] for j in range(3)]
            acc = client.multiply_accumulate([ct] * 3, (client.encode(v, PARAMS.levels) for v in weights))
            out.append(client.decrypt(client.rotate(acc, step)))
        results[t] = out

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(2):
        for i in range(6):
            want = x * sum(w[(t + i + j) % len(w)] for j in range(3))
            close(results[t][i], np.roll(want, -step), atol=3 * ATOL)


def test_plaintext_level_must_match(client, data):
    ct = client.encrypt(data["x"])
    with pytest.raises(CiphertextError):
        client.mul_plain(ct, client.encode(data["y"], PARAMS.levels - 1))


# -- rotations ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("step", [1, 3, -2, PARAMS.slots - 2, 1 - PARAMS.slots])
def test_rotate_is_cyclic_left(client, data, step):
    x = data["x"]
    out = client.rotate(client.encrypt(x), step)
    close(client.decrypt(out), np.roll(x, -step))


def test_rotate_negative_and_normalised_steps_agree(client, data):
    ct = client.encrypt(data["x"])
    a = client.decrypt(client.rotate(ct, -2))
    b = client.decrypt(client.rotate(ct, PARAMS.slots - 2))
    close(a, b)
    close(a, np.roll(data["x"], 2))
    close(client.decrypt(client.rotate(ct, 0)), data["x"])


def test_rotate_many_matches_single_rotations(client, data):
    ct = client.encrypt(data["x"])
    steps = [1, 0, 3, -2, 1]
    many = client.rotate_many(ct, steps)
    assert len(many) == len(steps)
    for step, out in zip(steps, many, strict=True):
        close(client.decrypt(out), np.roll(data["x"], -step))
    close(client.decrypt(many[3]), client.decrypt(client.rotate(ct, -2)))


def test_missing_rotation_key(client, data):
    ct = client.encrypt(data["x"])
    with pytest.raises(MissingKeyError):
        client.rotate(ct, 5)
    with pytest.raises(MissingKeyError):
        client.rotate_many(ct, [1, 5])


# -- levels -------------------------------------------------------------------------------------------
def test_level_down_then_ops(client, data):
    x, y = data["x"], data["y"]
    ct = client.level_down(client.encrypt(x), 2)
    assert client.level(ct) == 2
    close(client.decrypt(ct), x)
    out = client.rescale(client.mul_plain(ct, client.encode(y, 2)))
    assert client.level(out) == 1
    close(client.decrypt(out), x * y)
    close(client.decrypt(client.rotate(out, 3)), np.roll(x * y, -3))
    with pytest.raises(CiphertextError):
        client.level_down(out, 3)  # cannot go up


def test_level_bookkeeping_and_alignment(client, data):
    x, y = data["x"], data["y"]
    ct = client.encrypt(x)
    for expected in range(PARAMS.levels - 1, -1, -1):
        ct = client.rescale(client.mul_scalar(ct, 1.0))
        assert client.level(ct) == expected
    close(client.decrypt(ct), x)
    top, low = client.encrypt(y), client.level_down(client.encrypt(x), 1)
    for op in (client.add, client.sub):
        assert client.level(op(top, low)) == 1
        assert client.level(op(low, top)) == 1
    close(client.decrypt(client.add(top, low)), x + y)
    out = client.rescale(client.mul(top, low))
    assert client.level(out) == 0
    close(client.decrypt(out), x * y)


def test_pending_products_add_but_do_not_mix(client, data):
    x, y = data["x"], data["y"]
    a, b = client.encrypt(x), client.encrypt(y)
    p1 = client.mul_plain(a, client.encode(y, PARAMS.levels))
    p2 = client.mul(a, b)
    close(client.decrypt(client.rescale(client.add(p1, p2))), 2 * x * y)
    with pytest.raises(CiphertextError):
        client.add(p1, a)  # Delta^2 + Delta
    with pytest.raises(CiphertextError):
        client.rescale(a)  # nothing to rescale
    with pytest.raises(CiphertextError):
        client.mul_plain(p1, client.encode(y, PARAMS.levels))


# -- bytes --------------------------------------------------------------------------------------------
def test_serialize_round_trip(client, data):
    ct = client.level_down(client.encrypt(data["x"]), 3)
    blob = client.serialize(ct)
    assert isinstance(blob, bytes)
    back = client.deserialize(blob)
    assert client.level(back) == 3
    close(client.decrypt(back), data["x"])
    pending = client.deserialize(client.serialize(client.mul_scalar(ct, 2.0)))
    close(client.decrypt(client.rescale(pending)), 2 * data["x"])


def test_round_trip_is_exact(client, data):
    # Deserialising may re-attach the ciphertext to the receiver's context (OpenFHE: the fast parameter
    # path), which must not change a single coefficient: no noise may be added on the way. (Compared as
    # bytes: OpenFHE's decryption is randomised.)
    for ct in (client.encrypt(data["x"]), client.level_down(client.encrypt(data["y"]), 2)):
        blob = client.serialize(ct)
        assert client.serialize(client.deserialize(blob)) == blob


def test_truncated_bytes_are_rejected(client, data):
    blob = client.serialize(client.encrypt(data["x"]))
    for bad in (blob[: len(blob) // 2], blob[:-1], blob[:5], b"", b"garbage" * 10):
        with pytest.raises(CiphertextError):
            client.deserialize(bad)


def test_ciphertext_from_another_key_set_is_rejected(client, other_client, data):
    foreign = other_client.encrypt(data["x"])
    with pytest.raises(CiphertextError):
        client.deserialize(other_client.serialize(foreign))
    with pytest.raises(CiphertextError):
        client.add(client.encrypt(data["x"]), foreign)
    with pytest.raises(CiphertextError):
        client.decrypt(foreign)


# -- client/server split ------------------------------------------------------------------------------
def test_server_evaluates_client_decrypts(client, server, data):
    x, y = data["x"], data["y"]
    assert server.rotation_steps() == client.rotation_steps()
    ct = server.deserialize(client.serialize(client.encrypt(x)))
    prod = server.rescale(server.mul_plain(ct, server.encode(y, PARAMS.levels)))
    sq = server.rescale(server.mul(prod, server.level_down(ct, server.level(prod))))
    rotated = server.rotate_many(sq, [1, -2])
    total = server.add(rotated[0], rotated[1])
    out = client.decrypt(client.deserialize(server.serialize(total)))
    want = np.roll(x * y * x, -1) + np.roll(x * y * x, 2)
    close(out, want)
    fresh = server.encrypt(y)  # the server can encrypt with the public key
    close(client.decrypt(client.deserialize(server.serialize(fresh))), y)


def test_server_has_no_secret_key(client, server, data):
    assert not server.has_secret_key
    ct = server.encrypt(data["x"])
    with pytest.raises(MissingKeyError):
        server.decrypt(ct)


def test_exported_keys_hold_no_secret(client):
    keys = client.export_evaluation_keys()
    assert set(keys) == {"public", "relin"} | {f"rotation:{k}" for k in client.rotation_steps()}
    assert all(isinstance(v, bytes) and v for v in keys.values())
    secret = _secret_key_bytes(client)
    if secret is None:
        return
    probe = secret[len(secret) // 2 : len(secret) // 2 + 4096]
    assert len(probe) == 4096
    for name, blob in keys.items():
        assert probe not in blob, f"exported key {name!r} contains secret-key bytes"


def _secret_key_bytes(backend: CkksBackend) -> bytes | None:
    name = _registry_name(backend)
    if name == "desilofhe":
        return bytes(backend.engine.serialize_secret_key(backend._secret))
    if name == "openfhe":
        import openfhe

        return bytes(openfhe.Serialize(backend._secret, openfhe.BINARY))
    return None


def test_from_public_keys_without_public_key_fails(client):
    keys = client.export_evaluation_keys()
    del keys["public"]
    with pytest.raises(MissingKeyError):
        backend_class(_registry_name(client)).from_public_keys(PARAMS, keys)


# -- desilofhe extras ---------------------------------------------------------------------------------
def test_desilo_low_level_rotation_keys():
    if "desilofhe" not in _AVAILABLE:
        pytest.skip("desilofhe is not importable in this interpreter")
    backend = create_backend("desilofhe", PARAMS, **device_options("desilofhe"))
    backend.generate_keys([1, 2], rotation_levels={2: 1})
    keys = backend.export_evaluation_keys()
    assert len(keys["rotation:2"]) < len(keys["rotation:1"]) / 2
    x = np.linspace(-1, 1, backend.slots)
    with pytest.raises(MissingKeyError):
        backend.rotate(backend.encrypt(x), 2)
    low = backend.encrypt(x, level=1)
    close(backend.decrypt(backend.rotate(low, 2)), np.roll(x, -2))
    server = backend_class("desilofhe").from_public_keys(PARAMS, keys, **device_options("desilofhe"))
    out = server.rotate_many(server.level_down(server.deserialize(backend.serialize(backend.encrypt(x))), 1), [1, 2])
    close(backend.decrypt(out[1]), np.roll(x, -2))


_SERVER_SCRIPT = """
import sys
from cryptoface.backends import backend_class
from cryptoface.backends.protocol import CkksParameters
import pickle
name, path = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    job = pickle.load(f)
params = CkksParameters(**job["params"])
server = backend_class(name).from_public_keys(params, job["keys"])
assert not server.has_secret_key
ct = server.deserialize(job["ct"])
out = server.rotate(server.rescale(server.mul_scalar(server.rescale(server.mul(ct, ct)), 3.0)), 3)
with open(path + ".out", "wb") as f:
    f.write(server.serialize(out))
"""


def test_server_in_another_process(client, data, tmp_path):
    """The real split: keys and ciphertexts cross a process boundary (OpenFHE rebuilds its global caches)."""
    import pickle
    import subprocess
    import sys

    job = tmp_path / "job.pkl"
    params = {"log_ring": PARAMS.log_ring, "levels": PARAMS.levels}
    with open(job, "wb") as f:
        pickle.dump({"params": params, "keys": client.export_evaluation_keys(),
                     "ct": client.serialize(client.encrypt(data["x"]))}, f)
    proc = subprocess.run([sys.executable, "-c", _SERVER_SCRIPT, _registry_name(client), str(job)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = client.decrypt(client.deserialize((tmp_path / "job.pkl.out").read_bytes()))
    close(out, 3 * np.roll(data["x"] ** 2, -3))


# -- secret keys --------------------------------------------------------------------------------------
def test_secret_key_export_and_load(client, data):
    assert client.key_id
    server_side = backend_class(_registry_name(client)).from_public_keys(
        PARAMS, {"public": client.export_evaluation_keys()["public"]})
    assert server_side.key_id == client.key_id and not server_side.has_secret_key
    with pytest.raises(MissingKeyError):
        server_side.export_secret_key()
    server_side.load_secret_key(client.export_secret_key())
    assert server_side.has_secret_key
    close(server_side.decrypt(server_side.deserialize(client.serialize(client.encrypt(data["x"])))), data["x"])
    with pytest.raises(MissingKeyError):
        create_backend(_registry_name(client), PARAMS).load_secret_key(client.export_secret_key())  # no key set yet


def test_secret_key_of_another_key_set_is_refused(client, other_client, server):
    fresh = backend_class(_registry_name(client)).from_public_keys(PARAMS, client.export_evaluation_keys())
    with pytest.raises(MissingKeyError):
        fresh.load_secret_key(other_client.export_secret_key())
    assert not fresh.has_secret_key


def test_secret_key_of_other_parameters_is_refused(client):
    name = _registry_name(client)
    other = create_backend(name, CkksParameters(log_ring=PARAMS.log_ring, levels=PARAMS.levels + 1))
    other.generate_keys([])
    fresh = backend_class(name).from_public_keys(PARAMS, {"public": client.export_evaluation_keys()["public"]})
    with pytest.raises(MissingKeyError):
        fresh.load_secret_key(other.export_secret_key())


def test_secret_key_under_a_forged_header_is_refused(client, other_client):
    # The frame's key id is only a label: a real backend checks the key itself (OpenFHE's key tag, a desilofhe
    # probe decryption) so another key set's secret relabelled with this key id is still refused.
    name = _registry_name(client)
    if name == "simulator":
        pytest.skip("the simulator's secret key is only its key id")
    payload = _frame_parts(other_client.export_secret_key())[2]
    forged = wire.pack(_MAGICS[name], "secret", client.key_id, client._fp, {}, payload)
    fresh = backend_class(name).from_public_keys(PARAMS, {"public": client.export_evaluation_keys()["public"]})
    with pytest.raises(MissingKeyError):
        fresh.load_secret_key(forged)


_ROUND_TRIP_SCRIPT = """
import pathlib, sys
import numpy as np
from cryptoface.backends import backend_class, create_backend
from cryptoface.backends.protocol import CkksParameters
name, role, folder = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
params = CkksParameters(log_ring=int(sys.argv[4]), levels=int(sys.argv[5]))
def load_keys(kinds=None):
    return {p.stem.replace("_", ":"): p.read_bytes() for p in (folder / "eval").iterdir()
            if kinds is None or p.stem in kinds}
if role == "keygen":
    client = create_backend(name, params)
    client.generate_keys([1, 3])
    (folder / "eval").mkdir()
    for kind, blob in client.export_evaluation_keys().items():
        (folder / "eval" / (kind.replace(":", "_") + ".bin")).write_bytes(blob)
    (folder / "secret.key").write_bytes(client.export_secret_key())
elif role == "encrypt":
    server = backend_class(name).from_public_keys(params, load_keys())
    assert not server.has_secret_key
    x = np.load(folder / "x.npy")
    (folder / "ct.bin").write_bytes(server.serialize(server.rotate(server.encrypt(x), 3)))
else:
    client = backend_class(name).from_public_keys(params, load_keys({"public"}))
    client.load_secret_key((folder / "secret.key").read_bytes())
    assert client.has_secret_key
    np.save(folder / "out.npy", client.decrypt(client.deserialize((folder / "ct.bin").read_bytes())))
"""


def test_secret_key_round_trip_across_processes(client, data, tmp_path):
    """keygen, encryption under the public key and decryption with the saved secret key, each in its own process."""
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", data["x"])
    for role in ("keygen", "encrypt", "decrypt"):
        proc = subprocess.run(
            [sys.executable, "-c", _ROUND_TRIP_SCRIPT, _registry_name(client), role, str(tmp_path),
             str(PARAMS.log_ring), str(PARAMS.levels)],
            capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"{role}: {proc.stderr[-2000:]}"
    close(np.load(tmp_path / "out.npy"), np.roll(data["x"], -3))


# -- hostile bytes ------------------------------------------------------------------------------------
_MAGICS = {"simulator": wire.SIMULATOR, "desilofhe": wire.DESILO, "openfhe": wire.OPENFHE}


def _frame_parts(blob: bytes) -> tuple[bytes, dict, bytes]:
    """(magic, header, payloads) of a framed blob, read here independently of the wire module."""
    (n,) = struct.unpack_from("<I", blob, 6)
    return blob[:6], json.loads(blob[10 : 10 + n]), blob[10 + n :]


def _reframe(blob: bytes, head: bytes) -> bytes:
    magic, _header, payloads = _frame_parts(blob)
    return magic + struct.pack("<I", len(head)) + head + payloads


def _edit(blob: bytes, **changes: object) -> bytes:
    """The blob with header fields changed (a value of _DROP removes the field)."""
    header = _frame_parts(blob)[1]
    for field, value in changes.items():
        if value is _DROP:
            header.pop(field, None)
        else:
            header[field] = value
    return _reframe(blob, json.dumps(header).encode())


_DROP = object()
_HEADER_EDITS = {
    "not an object": lambda b: _reframe(b, b"[1, 2]"),
    "a JSON string": lambda b: _reframe(b, b'"ciphertext"'),
    "not JSON": lambda b: _reframe(b, b"{not json"),
    "not UTF-8": lambda b: _reframe(b, b'{"v": "\xff\xfe"}'),
    "deeply nested": lambda b: _reframe(b, b"[" * 30_000 + b"]" * 30_000),
    "NaN": lambda b: _reframe(b, b'{"v": NaN}'),
    "duplicate field": lambda b: _reframe(b, b'{"v": 1, "v": 1}'),
    "string sizes": lambda b: _edit(b, sizes=[str(s) for s in _frame_parts(b)[1]["sizes"]]),
    "negative sizes": lambda b: _edit(b, sizes=[-s for s in _frame_parts(b)[1]["sizes"]]),
    "huge sizes": lambda b: _edit(b, sizes=[2**80 for _ in _frame_parts(b)[1]["sizes"]]),
    "sizes not a list": lambda b: _edit(b, sizes=7),
    "fewer sizes": lambda b: _edit(b, sizes=[]),
    "float size": lambda b: _edit(b, sizes=[float(s) for s in _frame_parts(b)[1]["sizes"]]),
    "wrong checksum": lambda b: _edit(b, crc=[(c + 1) % 2**32 for c in _frame_parts(b)[1]["crc"]]),
    "no version": lambda b: _edit(b, v=_DROP),
    "future version": lambda b: _edit(b, v=2),
    "bool version": lambda b: _edit(b, v=True),
    "wrong kind": lambda b: _edit(b, kind="public" if _frame_parts(b)[1]["kind"] == "rotation" else "rotation"),
    "kind not a string": lambda b: _edit(b, kind=["secret"]),
    "no kind": lambda b: _edit(b, kind=_DROP),
    "no key id": lambda b: _edit(b, key_id=_DROP),
    "key id not a string": lambda b: _edit(b, key_id=12),
    "other key id": lambda b: _edit(b, key_id="0" * 16),
    "other parameters": lambda b: _edit(b, fp="0" * 16),
    "extra field": lambda b: _edit(b, note="hello"),
    "header length too large": lambda b: b[:6] + struct.pack("<I", 2**31) + b[10:],
    "header length zero": lambda b: b[:6] + struct.pack("<I", 0) + b[10:],
    "magic of another backend": lambda b: (wire.OPENFHE if b[:6] != wire.OPENFHE else wire.DESILO) + b[6:],
}
_CT_EDITS = {
    "no level": lambda b: _edit(b, level=_DROP),
    "bool level": lambda b: _edit(b, level=True),
    "string level": lambda b: _edit(b, level="4"),
    "negative level": lambda b: _edit(b, level=-1),
    "huge level": lambda b: _edit(b, level=10**30),
    "pending as int": lambda b: _edit(b, pending=0),
    "pending flipped": lambda b: _edit(b, pending=True),
}


@pytest.mark.parametrize("edit", sorted({**_HEADER_EDITS, **_CT_EDITS}))
def test_hostile_ciphertext_headers_are_ciphertext_errors(client, data, edit):
    if edit == "pending flipped" and _registry_name(client) == "simulator":
        pytest.skip("the simulator's pending flag is all there is of a pending product: nothing to contradict it")
    blob = client.serialize(client.encrypt(data["x"][:16], level=2))
    with pytest.raises(CiphertextError):
        client.deserialize({**_HEADER_EDITS, **_CT_EDITS}[edit](blob))


@pytest.mark.parametrize("edit", sorted(_HEADER_EDITS))
def test_hostile_key_headers_are_missing_key_errors(client, edit):
    name = _registry_name(client)
    keys = client.export_evaluation_keys()
    fresh = backend_class(name).from_public_keys(PARAMS, {"public": keys["public"]})
    mutate = _HEADER_EDITS[edit]
    secret = client.export_secret_key()
    if _changes(secret, mutate):
        with pytest.raises(MissingKeyError):
            fresh.load_secret_key(mutate(secret))
    assert not fresh.has_secret_key
    rotation = f"rotation:{min(client.rotation_steps())}"
    for kind in ("public", rotation):
        if _changes(keys[kind], mutate):
            with pytest.raises(MissingKeyError):
                backend_class(name).from_public_keys(PARAMS, {**keys, kind: mutate(keys[kind])})


def _changes(blob: bytes, mutate: Callable[[bytes], bytes]) -> bool:
    """Whether ``mutate`` changes the frame (edits of payload sizes and checksums are no-ops on the
    simulator's keys, which have no payload)."""
    bad = mutate(blob)
    try:
        return bad[:6] != blob[:6] or _frame_parts(bad)[1:] != _frame_parts(blob)[1:]
    except (ValueError, RecursionError, struct.error):
        return True


@pytest.mark.parametrize("bad", [None, "text", 5, ["public"], b"", b"CF"])
def test_non_bytes_and_empty_inputs(client, bad):
    cls = backend_class(_registry_name(client))
    with pytest.raises(CiphertextError):
        client.deserialize(bad)
    with pytest.raises(MissingKeyError):
        cls.from_public_keys(PARAMS, {"public": bad})
    with pytest.raises(MissingKeyError):
        cls.from_public_keys(PARAMS, bad)
    with pytest.raises(MissingKeyError):
        cls.from_public_keys(PARAMS, {"public": client.export_evaluation_keys()["public"]}).load_secret_key(bad)


@pytest.mark.parametrize("name", ["rotation:x", "rotation:", "rotation:1.5", "secret", "rot:1", "rotation:+1"])
def test_unknown_or_malformed_key_names_are_refused(client, name):
    keys = client.export_evaluation_keys()
    step = min(client.rotation_steps())
    keys[name] = keys.pop(f"rotation:{step}")
    with pytest.raises(MissingKeyError):
        backend_class(_registry_name(client)).from_public_keys(PARAMS, keys)


def test_rotation_key_under_another_step_name_is_refused(client):
    keys = client.export_evaluation_keys()
    steps = sorted(client.rotation_steps())
    first, second = f"rotation:{steps[0]}", f"rotation:{steps[1]}"
    keys[first], keys[second] = keys[second], keys[first]
    with pytest.raises(MissingKeyError):
        backend_class(_registry_name(client)).from_public_keys(PARAMS, keys)


def _mutations(blob: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """Seeded hostile variants of a framed blob: truncations, bit flips (mostly in the header), header edits,
    spliced and random bytes."""
    header_end = 10 + struct.unpack_from("<I", blob, 6)[0]
    edits = list(_HEADER_EDITS.values())
    for _ in range(count):
        op = rng.randrange(7)
        if op == 0:
            yield "truncate", blob[: rng.randrange(len(blob))]
        elif op in (1, 2):
            b = bytearray(blob)
            pos = rng.randrange(header_end) if op == 1 else rng.randrange(len(b))
            b[pos] ^= 1 << rng.randrange(8)
            yield f"flip@{pos}", bytes(b)
        elif op == 3:
            yield "edit", rng.choice(edits)(blob)
        elif op == 4:
            header = _frame_parts(blob)[1]
            field = rng.choice(sorted(header))
            header[field] = rng.choice([None, "", "x" * 40, -1, 0, 2**64, 1.5, True, [], {}, [-5], [2**70]])
            yield f"set {field}", _reframe(blob, json.dumps(header).encode())
        elif op == 5:
            yield "splice", blob[: rng.randrange(header_end)] + rng.randbytes(rng.randrange(64)) + blob[header_end:]
        else:
            junk = rng.randbytes(rng.randrange(256))
            yield "random", (blob[:6] + junk) if rng.random() < 0.5 else junk


def _only_our_errors(label: str, call: Callable[[], object]) -> None:
    try:
        call()
    except CryptoFaceError:
        pass
    except Exception as exc:  # the assertion this fuzz exists for
        raise AssertionError(f"{label}: {type(exc).__name__} escaped: {exc}") from exc


def test_fuzzed_bytes_raise_only_our_errors(client, data):
    """Bounded, seeded fuzz of every deserialiser: only CryptoFaceError subclasses may come out."""
    rng = random.Random(20240611)
    cls = backend_class(_registry_name(client))
    keys = client.export_evaluation_keys()
    target = cls.from_public_keys(PARAMS, {"public": keys["public"]})
    ct_blob = client.serialize(client.encrypt(data["x"]))
    for what, bad in _mutations(ct_blob, rng, 300):
        _only_our_errors(f"deserialize {what}", lambda bad=bad: client.deserialize(bad))
    for what, bad in _mutations(client.export_secret_key(), rng, 150):
        _only_our_errors(f"load_secret_key {what}", lambda bad=bad: target.load_secret_key(bad))
    names = sorted(keys)
    for what, bad in _mutations(keys["public"], rng, 60):
        _only_our_errors(f"public key {what}", lambda bad=bad: cls.from_public_keys(PARAMS, {**keys, "public": bad}))
    for i, (what, bad) in enumerate(_mutations(keys[names[-1]], rng, 90)):
        name = names[i % len(names)]
        _only_our_errors(f"{name} {what}", lambda bad=bad, name=name: cls.from_public_keys(PARAMS, {**keys, name: bad}))


def test_export_of_chosen_kinds_is_the_same_bytes_and_nothing_else(client):
    everything = client.export_evaluation_keys()
    kinds = {"public", "relin", *(f"rotation:{k}" for k in client.rotation_steps())}
    assert set(everything) == kinds  # ClientKeys.generate names the kinds by this rule without exporting them
    one = client.export_evaluation_keys(["relin"])
    assert list(one) == ["relin"] and one["relin"] == everything["relin"]
    with pytest.raises(MissingKeyError):
        client.export_evaluation_keys(["rotation:99999"])


def test_desilofhe_server_loads_top_level_keys_at_seven_levels():
    """desilofhe reports a top-level rotation key one level low at N = 2^14, 7 levels (dnum 8); the server must
    still load it (the load test's key-size measurement failed on exactly this) and rotate top-level ciphertexts."""
    if "desilofhe" not in available_backends():
        pytest.skip("desilofhe is not importable here")
    from cryptoface.params import secure_parameters

    params = secure_parameters(7, 14)
    client = create_backend("desilofhe", params, **device_options("desilofhe"))
    client.generate_keys([1])
    server = backend_class("desilofhe").from_public_keys(params, client.export_evaluation_keys(),
                                                         **device_options("desilofhe"))
    ct = server.rotate(server.deserialize(client.serialize(client.encrypt(np.arange(8.0)))), 1)
    assert np.allclose(client.decrypt(client.deserialize(server.serialize(ct)))[:4], [1, 2, 3, 4], atol=1e-3)
