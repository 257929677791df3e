"""Import of the released CryptoFaceNet4 checkpoint (needs ../shared and torch; skipped otherwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
CKPT = SHARED / "models" / "cryptofacenet4-64x64-paper.ckpt"
ASSET = Path(__file__).resolve().parents[1] / "src" / "cryptoface" / "assets" / "cryptofacenet4.npz"

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not CKPT.is_file(), reason=f"paper checkpoint not found at {CKPT} (needs ../shared)"),
]

torch = pytest.importorskip("torch", reason="torch not installed (pip install '.[train]')")

from cryptoface.cli.model_cmd import deterministic_inputs  # noqa: E402
from cryptoface.model import reference  # noqa: E402
from cryptoface.model.file import load_model  # noqa: E402
from cryptoface.train.model import count_parameters  # noqa: E402
from cryptoface.train.paper import import_paper, load_paper_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def paper():
    model = load_paper_checkpoint(CKPT)
    return model, import_paper(CKPT)


def test_strict_load_and_parameter_count(paper):
    model, _ = paper
    state = torch.load(CKPT, map_location="cpu", weights_only=True)["backbone"]
    assert len(state) == 603
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    assert count_parameters(model.nets) + count_parameters(model.linear) == 944_192


def test_numpy_forward_matches_float64_torch(paper):
    model, fused = paper
    x = deterministic_inputs(64, 3)
    with torch.no_grad():
        t = model.double()(torch.from_numpy(x)).numpy()
    r = reference.forward(fused, x)
    assert np.max(np.abs(r - t)) <= 1e-6 * np.abs(t).max()


def test_metadata(paper):
    _, fused = paper
    meta = fused.metadata
    assert meta["source"]["sha256"] == "e5b54e31c392959f79715aefe056aa8428a637f7196512fb3fded10d369dbe9c"
    assert "Ao & Boddeti" in meta["source"]["description"] and "WebFace4M" in meta["source"]["description"]
    assert meta["parameters"] == 944_192
    assert meta["fusion"]["floored_channels"] == 0
    assert 1e-6 < meta["fusion"]["min_abs_a2"] < 2e-6


@pytest.mark.skipif(not ASSET.is_file(), reason="packaged cryptofacenet4.npz not exported yet")
def test_packaged_asset_matches_fresh_import(paper):
    _, fused = paper
    asset = load_model(ASSET)
    x = deterministic_inputs(64, 1)
    assert np.array_equal(reference.forward(asset, x), reference.forward(fused, x))
