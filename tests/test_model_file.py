"""Model file format and numpy reference on random models (numpy only)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from cryptoface.errors import ModelFileError
from cryptoface.model import random_model, reference
from cryptoface.model.file import FORMAT_VERSION, load_model, model_tensors, read_header, save_model


@pytest.fixture(scope="module")
def model64():
    return random_model(64, seed=0)


def _rewrite(src, dst, edit):
    """Copy an .npz model file, letting ``edit(arrays, header)`` change it."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(bytes(arrays.pop("__header__")).decode())
    edit(arrays, header)
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    dst.write_bytes(buf.getvalue())
    return dst


def test_round_trip(model64, tmp_path):
    path = save_model(model64, tmp_path / "m.npz")
    loaded = load_model(path)
    a, b = model_tensors(model64), model_tensors(loaded)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert loaded.architecture == "CryptoFaceNet4" and loaded.resolution == 64
    assert loaded.metadata == model64.metadata
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64))
    assert np.array_equal(reference.forward(model64, x), reference.forward(loaded, x))


def test_header_keys(model64, tmp_path):
    header = read_header(save_model(model64, tmp_path / "m.npz"))
    for key in (
        "format",
        "version",
        "architecture",
        "resolution",
        "patch_size",
        "grid",
        "n_patches",
        "embedding_dim",
        "blocks",
        "input",
        "layouts",
        "metadata",
    ):
        assert key in header
    assert header["version"] == FORMAT_VERSION and header["n_patches"] == 4 and header["grid"] == [2, 2]
    assert len(header["blocks"]) == 5


def test_version_mismatch(model64, tmp_path):
    src = save_model(model64, tmp_path / "m.npz")
    bad = _rewrite(src, tmp_path / "v.npz", lambda arrays, header: header.update(version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="version"):
        load_model(bad)


def test_wrong_shape(model64, tmp_path):
    src = save_model(model64, tmp_path / "m.npz")

    def edit(arrays, header):
        arrays["patch1/block2/conv1"] = arrays["patch1/block2/conv1"][:, :16]

    bad = _rewrite(src, tmp_path / "s.npz", edit)
    with pytest.raises(ModelFileError, match="shape"):
        load_model(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "nope.npz")


@pytest.mark.parametrize("resolution", [64, 96, 128])
def test_reference_shapes_and_ranges(resolution):
    model = random_model(resolution, seed=1)
    assert model.n_patches == (resolution // 32) ** 2
    rng = np.random.default_rng(resolution)
    x = rng.uniform(-1, 1, (2, 3, resolution, resolution))
    trace: dict[str, float] = {}
    out = reference.forward(model, x, trace)
    assert out.shape == (2, 256)
    assert reference.forward(model, x[0]).shape == (256,)
    assert np.all(np.isfinite(out))
    assert len(trace) == model.n_patches * 11
    assert max(trace.values()) < 50
    assert 0.1 < np.abs(out).max() < 50


def test_random_model_deterministic():
    a, b = random_model(64, seed=3), random_model(64, seed=3)
    ta, tb = model_tensors(a), model_tensors(b)
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert not np.array_equal(ta["bias"], model_tensors(random_model(64, seed=4))["bias"])
