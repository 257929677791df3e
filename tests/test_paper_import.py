"""Import of the released CryptoFaceNet4 checkpoint (needs ../shared and torch; skipped otherwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
CKPT = SHARED / "models" / "cryptofacenet4-64x64-paper.ckpt"
ASSET = Path(__file__).resolve().parents[1] / "src" / "cryptoface" / "assets" / "cryptofacenet4.npz"
PAPER_SHA256 = "e5b54e31c392959f79715aefe056aa8428a637f7196512fb3fded10d369dbe9c"

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
    assert meta["source"]["sha256"] == PAPER_SHA256
    assert "Ao & Boddeti" in meta["source"]["description"] and "WebFace4M" in meta["source"]["description"]
    assert meta["parameters"] == 944_192
    assert meta["fusion"]["floored_channels"] == 0
    assert 1e-6 < meta["fusion"]["min_abs_a2"] < 2e-6


def test_import_paper_command_writes_the_same_model(paper, tmp_path):
    from cryptoface.cli import main

    _, fused = paper
    out = tmp_path / "paper.npz"
    assert main(["model", "import-paper", str(CKPT), "--out", str(out)]) == 0
    x = deterministic_inputs(64, 1)
    assert np.array_equal(reference.forward(load_model(out), x), reference.forward(fused, x))


def test_packaged_model_credits_the_paper_weights():
    # The bundled default starts from the paper weights (imported as-is or fine-tuned from them), so it
    # must say so and carry the authors' credit and the WebFace4M terms.
    source = load_model(ASSET).metadata["source"]
    from_paper = source.get("sha256") == PAPER_SHA256 or source.get("init") == "paper"
    assert from_paper, source
    text = " ".join(str(v) for v in source.values())
    assert "Ao & Boddeti" in text and "WebFace4M" in text
