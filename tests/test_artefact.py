"""Prepared model folders: the loaded plan and caches equal freshly built ones, an inference from them is
bit-identical to one without (simulator), and damaged, stale or mismatched folders are refused."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.cli import main
from cryptoface.client.keys import ClientKeys, load_public_backend
from cryptoface.engine import plan_for
from cryptoface.engine.artefact import (
    ARRAYS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ArtefactError,
    build_caches,
    load_prepared,
    plan_to_json,
    prepare_model,
    read_manifest,
)
from cryptoface.engine.evaluator import EncryptedModel
from cryptoface.engine.layout import TemplateLayout
from cryptoface.errors import MissingKeyError
from cryptoface.model.file import save_model
from cryptoface.model.random import random_model
from cryptoface.params import default_parameters, secure_parameters

RES = 64
PARAMS = default_parameters(RES)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("artefact")
    model = random_model(RES, 3)
    save_model(model, d / "m.npz")
    manifest = prepare_model(d / "m.npz", PARAMS, d / "out", backend="simulator")
    return d, model, manifest


def test_manifest_describes_the_folder(prepared):
    d, _, manifest = prepared
    assert read_manifest(d / "out") == manifest
    raw = json.loads((d / "out" / MANIFEST_FILE).read_text())
    assert raw["kind"] == "cryptoface-prepared-model" and raw["format"] == 1
    assert raw["model"]["resolution"] == RES and raw["backend"] == "simulator"
    assert (d / "out" / MODEL_FILE).read_bytes() == (d / "m.npz").read_bytes()
    names = sorted(p.name for p in (d / "out").iterdir())
    assert names == sorted([MANIFEST_FILE, MODEL_FILE, "plan.json", ARRAYS_FILE])
    with np.load(d / "out" / ARRAYS_FILE, allow_pickle=False) as npz:  # no object arrays: loads without pickle
        assert all(npz[k].dtype != object for k in npz.files)


def test_loaded_plan_and_caches_equal_fresh_ones(prepared):
    d, model, _ = prepared
    loaded, prep = load_prepared(d / "out", verify=True)
    fresh = plan_for(RES, PARAMS.slots, PARAMS.levels)
    (a, arrays_a), (b, arrays_b) = plan_to_json(prep.plan), plan_to_json(fresh)
    assert a == b and arrays_a.keys() == arrays_b.keys()
    assert all(np.array_equal(arrays_a[k], arrays_b[k]) and arrays_a[k].dtype == arrays_b[k].dtype for k in arrays_a)
    want = build_caches(model, fresh)
    assert want.structures.keys() == prep.caches.structures.keys()
    for name, sts in want.structures.items():
        for x, y in zip(sts, prep.caches.structures[name], strict=True):
            assert all(np.array_equal(getattr(x, f), getattr(y, f)) for f in ("in_ct", "offset", "diag", "widx"))
    for name, diags in want.diagonals.items():
        (x,), (y,) = diags, prep.caches.diagonals[name]
        assert np.array_equal(x.weights, y.weights) and np.array_equal(x.offset, y.offset)
    assert np.array_equal(loaded.bias, model.bias)


def test_inference_from_the_folder_is_bit_identical(prepared):
    d, model, _ = prepared
    _, prep = load_prepared(d / "out")
    be = SimulatorBackend(PARAMS)
    be.generate_keys(prep.plan.rotation_keys)
    x = np.random.default_rng(0).uniform(-1.0, 1.0, (3, RES, RES))
    plain = EncryptedModel(model, be, plan_for(RES, be.slots, PARAMS.levels), workers=1)
    cts = plain.encrypt_input(x)
    want, want_layout = plain.infer(cts, progress=False)
    got, layout = prep.infer(be, cts, workers=1)
    assert be.serialize(got) == be.serialize(want)
    assert prep.plan.clear_tail == plain.plan.clear_tail
    assert layout == want_layout if isinstance(want_layout, TemplateLayout) else layout.name == want_layout.name


def test_mismatched_backends_are_refused(prepared):
    d, _, _ = prepared
    _, prep = load_prepared(d / "out")
    other = SimulatorBackend(secure_parameters(PARAMS.levels + 1))
    other.generate_keys(prep.plan.rotation_keys)
    with pytest.raises(ArtefactError, match="prepared for CKKS parameters"):
        prep.engine(other)
    few = SimulatorBackend(PARAMS)
    few.generate_keys([1])
    with pytest.raises(MissingKeyError, match="rotation"):
        prep.engine(few)


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_damaged_or_stale_folders_are_refused(prepared, tmp_path):
    d, _, _ = prepared
    with pytest.raises(ArtefactError, match="prepare-model"):
        load_prepared(tmp_path / "nowhere")
    out = _copy(d / "out", tmp_path / "a")
    data = (out / MODEL_FILE).read_bytes()
    (out / MODEL_FILE).write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(ArtefactError, match="sha256"):
        load_prepared(out)
    out = _copy(d / "out", tmp_path / "b")
    (out / ARRAYS_FILE).write_bytes((out / ARRAYS_FILE).read_bytes()[:-10])
    with pytest.raises(ArtefactError, match="missing or not the file"):
        load_prepared(out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    for change, reason in (({"cryptoface": "0.0.0-other"}, "prepared by CryptoFace"), ({"format": 9}, "format"),
                           ({"kind": "x"}, "not a prepared model"), ({"files": 3}, "readable")):
        (out / MANIFEST_FILE).write_text(json.dumps({**manifest, **change}))
        with pytest.raises(ArtefactError, match=reason):
            load_prepared(out)
    out = _copy(d / "out", tmp_path / "c")  # same size, a damaged member: the zip CRC or verify=True
    raw = bytearray((out / ARRAYS_FILE).read_bytes())
    with zipfile.ZipFile(out / ARRAYS_FILE) as z:
        info = z.infolist()[-1]
    raw[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF
    (out / ARRAYS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ArtefactError):
        load_prepared(out)


def test_prepare_model_command_with_a_public_key_folder(tmp_path, capsys):
    keys = ClientKeys.generate("simulator", PARAMS, resolution=RES)
    keys.save(tmp_path / "home", public_out=tmp_path / "pub")
    assert main(["prepare-model", "--backend", "simulator", "--public-keys", str(tmp_path / "pub"),
                 "--out", str(tmp_path / "prep")]) == 0
    assert "prepared" in capsys.readouterr().out
    backend, _ = load_public_backend(tmp_path / "pub")
    model, prep = load_prepared(tmp_path / "prep")
    assert prep.engine(backend).plan is prep.plan and model.resolution == RES  # keys cover the plan
    assert main(["prepare-model", "--params", '{"log_ring": 12}', "--out", str(tmp_path / "x")]) == 2
    assert main(["prepare-model", "--params", str(tmp_path / "pub" / "keyset.json"), "--out",
                 str(tmp_path / "y")]) == 0
    assert read_manifest(tmp_path / "y").params_id == prep.manifest.params_id
