"""HerPN-input ranges: exact rescale (torch), numpy range statistics, `cryptoface ranges`, shipped-model bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cryptoface.model.reference import forward
from cryptoface.train.ranges import RangeStats, fused_forward_ranges, layer_names, squared_norm_stats

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"


def _random_input(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.tanh(rng.standard_normal((n, 3, 64, 64)))


def test_fused_forward_ranges_matches_reference() -> None:
    from cryptoface.model.random import random_model

    model = random_model(64, seed=1)
    x = _random_input(3)
    trace: dict[str, float] = {}
    ref = forward(model, x, trace)
    stats = RangeStats()
    out = fused_forward_ranges(model, x, stats)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert list(stats.maxima) == layer_names(4) == list(trace)
    for k, v in trace.items():
        assert stats.maxima[k] == pytest.approx(v, rel=1e-12)
        p = stats.percentile(k, 99.9)
        assert 0 < p <= v
        assert stats.percentile(k, 50.0) <= p
    assert stats.nonfinite_herpn == 0 and stats.nonfinite_embedding == 0 and stats.n_images == 3


def test_squared_norm_stats() -> None:
    e = np.ones((10, 4)) * 2.0
    s = squared_norm_stats(e)
    assert s["mean"] == pytest.approx(16.0) and s["std"] == pytest.approx(0.0) and s["n"] == 10


def test_rescale_herpn_inputs_is_exact() -> None:
    torch = pytest.importorskip("torch", reason="needs the 'train' extra (torch)")
    from cryptoface.train.fuse import fuse
    from cryptoface.train.model import PatchCNN
    from cryptoface.train.ranges import channel_maxima, rescale_herpn_inputs

    torch.manual_seed(0)
    model = PatchCNN(64).double()
    x = torch.from_numpy(_random_input(8))
    model.train()
    with torch.no_grad():  # give every BatchNorm non-trivial running statistics
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        model(x)
    model.eval()
    with torch.no_grad():
        before = model(x)
    maxima = channel_maxima(model, [x])
    target = 0.25 * min(float(v.max()) for v in maxima.values())  # forces a rescale of every layer
    factors = rescale_herpn_inputs(model, maxima, target)
    assert min(factors.values()) > 1.0
    with torch.no_grad():
        after = model(x)
    np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-6, atol=1e-8)
    new_max = channel_maxima(model, [x])
    assert max(float(v.max()) for v in new_max.values()) <= target * (1 + 1e-6)  # factors are float32
    # the fused model sees the same bound
    trace: dict[str, float] = {}
    forward(fuse(model), x.numpy(), trace)
    assert max(trace.values()) <= target * (1 + 1e-6)


def test_ranges_cli_on_generated_crops(tmp_path: Path) -> None:
    from cryptoface.cli import main
    from cryptoface.model.file import save_model
    from cryptoface.model.random import random_model
    from test_train_smoke import make_faces_train

    path = save_model(random_model(64, seed=2), tmp_path / "m.npz")
    data = make_faces_train(tmp_path / "faces", n=8)
    out = tmp_path / "ranges.json"
    base = ["ranges", str(path), "--train-dir", str(data), "--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert main([*base, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 8 and len(report["layers"]) == 44
    assert main([*base, "--bound", "1e-9"]) == 1
    # --claim writes only a bound that held, with what it was measured on
    from cryptoface.model.file import load_model

    assert main([*base, "--bound", "1e-9", "--claim"]) == 1
    assert load_model(path).metadata.get("activation_bound") is None
    assert main([*base, "--claim"]) == 2  # no bound to claim
    assert main([*base, "--bound", "1e9", "--train-limit", "4", "--claim"]) == 2  # a claim covers every image
    assert load_model(path).metadata.get("activation_bound") is None
    bound = 1.01 * report["overall_max"]
    assert main([*base, "--bound", str(bound), "--claim"]) == 0
    meta = load_model(path).metadata
    assert meta["activation_bound"] == bound and meta["activation_ranges"]["images"] == 8
    assert meta["activation_ranges"]["measured_max"] == report["overall_max"]
    assert len(meta["activation_ranges"]["per_layer"]) == 44
    command = meta["activation_ranges"]["command"]
    assert "--train-dir" in command and f"--bound {bound}" in command


@pytest.mark.shared
def test_shipped_model_activation_bound_on_real_faces(tmp_path: Path) -> None:
    """If the bundled model claims ``activation_bound``, check it on real LFW photos and training crops."""
    from cryptoface.assets import default_model_path
    from cryptoface.model.file import load_model

    model = load_model(default_model_path())
    bound = model.metadata.get("activation_bound")
    if bound is None:
        pytest.skip("the bundled model claims no activation_bound")
    lfw, train = SHARED / "data" / "lfw", SHARED / "data" / "faces-train"
    if not (lfw / "pairs.txt").is_file() or not (train / "index.csv").is_file():
        pytest.skip("../shared/data (LFW, faces-train) is absent; real-face bound check skipped")
    from cryptoface.eval.lfw import aligned_crops, read_pairs
    from cryptoface.face.resize import to_model_input
    from cryptoface.train.data import TrainIndex, decode_crops, read_index

    pairs = read_pairs(lfw / "pairs.txt")
    names = sorted(set(pairs.left) | set(pairs.right))[::240]  # 33 photos spread over the alphabet
    crops, _ = aligned_crops(lfw, names, progress=False)
    index = read_index(train)
    rows = np.linspace(0, len(index) - 1, 24).round().astype(int)
    sub = TrainIndex(
        index.root,
        [index.shard[i] for i in rows],
        [index.member[i] for i in rows],
        [index.identity[i] for i in rows],
        [index.source[i] for i in rows],
        index.digest,
    )
    faces = [crops[n] for n in names] + list(decode_crops(sub, progress=False))
    stats = RangeStats()
    for i in range(0, len(faces), 16):
        fused_forward_ranges(model, np.stack([to_model_input(f, model.resolution) for f in faces[i : i + 16]]), stats)
    assert stats.nonfinite_herpn == 0 and stats.nonfinite_embedding == 0
    assert stats.overall_max <= float(bound), f"max |HerPN input| {stats.overall_max:.2f} > claimed {bound}"
