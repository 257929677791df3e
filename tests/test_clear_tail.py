"""The clear tail: in the refresh protocol the server stops Net4 after its last block and the client finishes it.

Parameters and the one rule that reads a level count, the trunk plan against the whole one, the tail's maths
against the reference forward and its wire reader against hostile bytes, the engine on the slot simulator, and
the client's refresh over a real HTTP server (what the server returns, what it refuses, what a lying server gets).
"""

from __future__ import annotations

import dataclasses
import io
import zipfile

import numpy as np
import pytest

from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.client import Client, ClientKeys, HTTPTransport, TamperingError
from cryptoface.client.transport import ImageProbe
from cryptoface.engine import encrypt_image, plan_for
from cryptoface.engine.evaluator import EncryptedModel
from cryptoface.engine.plan import build_plan
from cryptoface.errors import CryptoFaceError, ModelFileError, ParameterError
from cryptoface.match.layout import EMBEDDING_DIM, normalised_layout
from cryptoface.match.refresh import normalised
from cryptoface.model.random import random_model
from cryptoface.model.reference import forward, patch_forward, split_patches
from cryptoface.model.tail import MAX_TAIL_BYTES, ModelTail
from cryptoface.params import LEVELS, default_parameters
from test_service_support import running


@pytest.fixture(scope="module")
def model():
    return random_model(64, 3)


@pytest.fixture(scope="module")
def net_keys():
    return ClientKeys.generate("simulator", default_parameters(64), resolution=64)


def face(seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (3, 64, 64))


# -- parameters and plans ---------------------------------------------------------------------------
def test_refresh_parameters_stop_net4_before_its_tail_and_stay_128_bit():
    p = default_parameters(64)
    assert p.levels == LEVELS.trunk_levels(64) == LEVELS.network_levels(64) - LEVELS.tail == 21
    assert p.key_switch_digits == 2 and p.special_primes == 9
    p.check_security()
    assert default_parameters(64, protocol="one-round").levels == 30  # the one-round protocol runs it all
    for res in (96, 128):  # several units or ciphertexts at the cut: the whole network stays on the server
        assert default_parameters(res).levels == LEVELS.network_levels(res) == 23
    assert LEVELS.plan_end(64, 21) == (True, 0) and LEVELS.plan_end(64, 22) == (True, 1)
    assert LEVELS.plan_end(64, 23) == (False, 0) and LEVELS.plan_end(64, 30) == (False, 7)
    with pytest.raises(ParameterError, match="needs 21 levels"):
        LEVELS.plan_end(64, 20)
    with pytest.raises(ParameterError, match="needs 23 levels"):
        LEVELS.plan_end(96, 21)


def test_the_trunk_plan_is_the_whole_plan_without_its_last_two_layers():
    slots = default_parameters(64).slots
    trunk, whole = plan_for(64, slots, 21), plan_for(64, slots, 23)
    assert trunk.clear_tail and not whole.clear_tail
    assert [x.name for x in whole.layers[:-2]] == [x.name for x in trunk.layers]
    assert [x.name for x in whole.layers[-2:]] == ["pool.q", "pool+head"]
    assert [(x.level_in, x.level_out) for x in whole.layers[:-2]] == \
        [(x.level_in + 2, x.level_out + 2) for x in trunk.layers]  # the same schedule, two levels lower
    assert trunk.start_level == 21 and trunk.end_level == 0
    assert trunk.output_layout is trunk.layouts["s3"] and trunk.output_layout.n_cts == 1
    assert trunk.rotation_keys < whole.rotation_keys  # the head's reduction keys are not needed
    assert trunk.totals()["diagonals"] < whole.totals()["diagonals"]
    with pytest.raises(ValueError, match="one"):
        build_plan(96, slots, key_mode="pow2", clear_tail=True)


# -- the tail -----------------------------------------------------------------------------------------
def test_the_tail_finishes_the_reference_forward_exactly(model):
    x = face()
    acts = []  # the last block's output per patch, taken where the reference enters the pool quadratic
    for net, patch in zip(model.patches, split_patches(x[None], model.grid), strict=True):
        seen = {}
        patch_forward(net, patch, observe=lambda k, inp, _out, seen=seen: seen.setdefault(k, inp))
        acts.append(seen["pool.q"][0])
    tail = ModelTail.of(model)
    np.testing.assert_allclose(tail.embedding(np.stack(acts)), forward(model, x), rtol=1e-12, atol=1e-12)
    again = ModelTail.from_bytes(tail.to_bytes())
    assert again.digest() == tail.digest() and again.resolution == 64
    np.testing.assert_array_equal(again.head, tail.head)
    with pytest.raises(ValueError, match="last block"):
        tail.embedding(np.zeros((4, 64, 8)))


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _fields(model, **change):
    t = ModelTail.of(model)
    out = {"resolution": np.int64(64), "pool_b": t.pool_b, "pool_c": t.pool_c, "head": t.head, "bias": t.bias}
    out.update(change)
    return {k: v for k, v in out.items() if v is not None}


def _deflated(fields: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **fields)
    return buf.getvalue()


def _bomb(model) -> bytes:
    """The five members, the head a 256 MB run of zeros deflated to a few hundred KB (allocated whole by np.load)."""
    good = ModelTail.of(model).to_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            if info.filename != "head.npy":
                dst.writestr(info.filename, src.read(info))
                continue
            head = zipfile.ZipInfo("head.npy")
            head.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(head, "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2**25,)})
                for _ in range(2**8):
                    f.write(bytes(2**20))
    return buf.getvalue()


FIRED: list[int] = []


def _fire() -> int:
    FIRED.append(1)
    return 0


class _Payload:
    """Unpickling it calls :func:`_fire`: the test sees whether a reader ran a pickle."""

    def __reduce__(self):
        return (_fire, ())


def _short(model) -> bytes:
    """The head's header promises its shape; its data stops 8 bytes early."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(ModelTail.of(model).to_bytes())) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            dst.writestr(info.filename, body[:-8] if info.filename == "head.npy" else body)
    return buf.getvalue()


def _duplicated(model) -> bytes:
    """A second, zeroed head.npy after the first: a zip whose directory names one member twice."""
    t = ModelTail.of(model)
    buf = io.BytesIO(t.to_bytes())
    zero = io.BytesIO()
    np.save(zero, np.zeros_like(t.head))
    with pytest.warns(UserWarning, match="Duplicate"), zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("head.npy", zero.getvalue())
    return buf.getvalue()


HOSTILE = {  # case -> (bytes from the model, what the refusal says)
    "garbage": (lambda m: b"PK\x03\x04 not a zip", "unreadable"),
    "pickle": (lambda m: _npz(**_fields(m, head=np.array([_Payload()] * 3, dtype=object))), "expected float64"),
    "missing": (lambda m: _npz(**_fields(m, bias=None)), "holds resolution and"),
    "extra": (lambda m: _npz(**_fields(m), more=np.zeros(1)), "holds resolution and"),
    "duplicate": (_duplicated, "holds resolution and"),
    "shape": (lambda m: _npz(**_fields(m, head=ModelTail.of(m).head[:, :, :10])), "expected float64"),
    "dtype": (lambda m: _npz(**_fields(m, bias=ModelTail.of(m).bias.astype(np.float32))), "expected float64"),
    "nan": (lambda m: _npz(**_fields(m, pool_b=np.full_like(ModelTail.of(m).pool_b, np.nan))), "non-finite"),
    "resolution": (lambda m: _npz(**_fields(m, resolution=np.int64(65))), "unknown resolution"),
    "resolution-shape": (lambda m: _npz(**_fields(m, resolution=np.array([64, 64], dtype=np.int64))), "int64"),
    "resolution-float": (lambda m: _npz(**_fields(m, resolution=np.float64(64.0))), "int64"),
    "fortran": (lambda m: _npz(**_fields(m, head=np.asfortranarray(ModelTail.of(m).head))), "Fortran"),
    "short": (_short, "bytes of data"),
    "compressed": (lambda m: _deflated(_fields(m)), "uncompressed"),  # faithful, but deflated: not inflated
    "bomb": (_bomb, "uncompressed"),
    "npy": (lambda m: _npy(ModelTail.of(m).head), "unreadable"),  # one array, not a zip
    "oversize": (lambda m: b"\0" * (MAX_TAIL_BYTES + 1), "at most"),
    "not-bytes": (lambda m: "a string", "at most"),
}


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_a_hostile_tail_is_a_model_file_error_that_says_why(model, hostile):
    make, says = HOSTILE[hostile]
    data = make(model)
    with pytest.raises(ModelFileError, match=says):
        ModelTail.from_bytes(data)
    assert FIRED == []  # nothing was unpickled


# -- the engine -------------------------------------------------------------------------------------
def test_the_trunk_on_the_simulator_and_the_clear_tail_give_the_reference_embedding(model):
    params = default_parameters(64)
    be = SimulatorBackend(params)
    plan = plan_for(64, be.slots, params.levels)
    be.generate_keys(plan.rotation_keys)
    em = EncryptedModel(model, be, plan)
    x = face(11)
    out, layout = em.infer(em.encrypt_input(x), progress=False)
    assert layout is plan.layouts["s3"] and be.level(out) == 0
    ref = forward(model, x)
    assert np.max(np.abs(em.decrypt_template(out) - ref)) <= 1e-9 * np.max(np.abs(ref))


# -- the client and the service over HTTP -------------------------------------------------------------
def _client(srv, keys) -> Client:
    _, http = srv.tenant("acme")
    return Client(keys, HTTPTransport(srv.url, api_key=http.headers["x-api-key"]), threshold=0.3)


def _image_probe(keys: ClientKeys, x: np.ndarray) -> ImageProbe:
    be = keys.backend
    return ImageProbe(tuple(be.serialize(c) for c in encrypt_image(be, 64, x)), 64, "monolithic")


def test_the_client_refreshes_a_block_output_into_the_reference_template(tmp_path, model, net_keys):
    x = face(5)
    with running(tmp_path / "s.db", model=model, model_id="random-3") as srv:
        client = _client(srv, net_keys)
        client.register()
        probe = _image_probe(net_keys, x)
        out = client.transport.infer(client.key_id, probe)  # the synchronous route
        assert out.trunk and out.inferred and out.model_id == "random-3"
        assert out.tail_digest == ModelTail.of(model).digest()
        with pytest.raises(CryptoFaceError, match="refresh"):  # a block output is never sent as a template
            out.to_request()
        fresh = client.refresh(probe)  # the client's own path: an inference job, then the clear tail
        assert fresh.normalised and not fresh.trunk
        keys = client.matcher()
        slots = client.decrypt_slots(fresh.ciphertext, keys=keys)
        got = slots[normalised_layout(keys.backend.slots).slots_of(EMBEDDING_DIM)]
        np.testing.assert_allclose(got, normalised(forward(model, x)), atol=1e-6)

        # the tail route: tenants only, the served model's tail
        assert srv.anonymous().get("/v1/model/tail").status_code == 401
        model_id, data = client.transport.model_tail()
        assert model_id == "random-3" and ModelTail.from_bytes(data).digest() == ModelTail.of(model).digest()

        # images under these parameters cannot be matched by the server, which has no template to normalise:
        # refused before any heavy work; and a block output is never sent, over HTTP either
        with pytest.raises(CryptoFaceError, match="tail") as err:
            client.transport.compare(client.key_id, [(probe, probe)])
        assert err.value.status == 400
        with pytest.raises(CryptoFaceError, match="refresh"):
            client.transport.compare(client.key_id, [(out, out)])

        # the tail is fetched once and kept while the results name it
        calls = []
        fetch = client.transport.model_tail
        client.transport.model_tail = lambda: calls.append(1) or fetch()
        client.refresh(client.transport.infer(client.key_id, probe))
        assert calls == []


def test_a_server_that_lies_about_the_output_or_the_tail_is_caught(tmp_path, model, net_keys):
    with running(tmp_path / "s.db", model=model, model_id="random-3") as srv:
        client = _client(srv, net_keys)
        client.register()
        out = client.transport.infer(client.key_id, _image_probe(net_keys, face(9)))
        assert out.inferred and len(out.tail_digest) == 64
        as_template = dataclasses.replace(out, trunk=False)  # "this is a template"
        with pytest.raises(TamperingError, match="block"):
            client.refresh(as_template)
        with pytest.raises(TamperingError, match="names no model tail"):
            client.refresh(dataclasses.replace(out, tail_digest=""))
        with pytest.raises(CryptoFaceError, match="run the request again"):  # another model's result
            client.refresh(dataclasses.replace(out, tail_digest="0" * 64))

        served, data = client.transport.model_tail()
        client._tail = None
        client.transport.model_tail = lambda: (served, data[: len(data) // 2])  # a broken tail
        with pytest.raises(TamperingError, match="unusable"):
            client.refresh(out)
        other = ModelTail.of(random_model(96, 0))  # a valid tail of another architecture, named by the result
        client.transport.model_tail = lambda: (served, other.to_bytes())
        with pytest.raises(TamperingError, match="96x96"):
            client.refresh(dataclasses.replace(out, tail_digest=other.digest()))
        client.transport.model_tail = lambda: (served, data)  # the honest one again
        assert client.refresh(out).normalised


def test_a_net4_key_set_with_the_whole_network_still_gets_a_template(tmp_path, model):
    keys = ClientKeys.generate("simulator", default_parameters(64, reserve=LEVELS.tail), resolution=64)
    assert keys.backend.params.levels == 23  # as key sets made before the clear tail
    x = face(13)
    with running(tmp_path / "s.db", model=model, model_id="random-3") as srv:
        client = _client(srv, keys)
        client.register()
        out = client.transport.infer(client.key_id, _image_probe(keys, x))
        assert not out.trunk and out.tail_digest == "" and out.replicas > 1
        fresh = client.refresh(out)
        m = client.matcher()
        slots = client.decrypt_slots(fresh.ciphertext, keys=m)
        got = slots[normalised_layout(m.backend.slots).slots_of(EMBEDDING_DIM)]
        np.testing.assert_allclose(got, normalised(forward(model, x)), atol=1e-6)


def test_a_net9_server_serves_no_tail(tmp_path, net_keys):
    with running(tmp_path / "s.db", model=random_model(96, 0), model_id="random-96") as srv:
        r = _client(srv, net_keys).transport.http.get("/v1/model/tail")
        assert r.status_code == 501 and "whole network" in r.json()["detail"]


def test_a_server_without_a_model_has_no_tail(tmp_path, net_keys):
    with running(tmp_path / "s.db") as srv:
        client = _client(srv, net_keys)
        r = client.transport.http.get("/v1/model/tail")
        assert r.status_code == 501 and r.json()["error"] == "engine_unavailable"


def test_keygen_levels_23_makes_the_whole_network_key_set_at_the_refresh_scale(tmp_path):
    from cryptoface.cli import main

    assert main(["keygen", "--backend", "simulator", "--levels", "23", "--home", str(tmp_path / "k")]) == 0
    params = ClientKeys.load(tmp_path / "k").backend.params
    assert (params.levels, params.scale_bits) == (23, default_parameters(64).scale_bits)
    assert not plan_for(64, params.slots, params.levels).clear_tail
