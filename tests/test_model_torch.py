"""Torch model vs fused numpy reference: parameter counts, fusion exactness, file round trip, |a2| floor."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install '.[train]')")

from cryptoface.model import reference, spec  # noqa: E402
from cryptoface.model.file import load_model, save_model  # noqa: E402
from cryptoface.train.fuse import DEFAULT_A2_FLOOR, floor_a2, fuse, herpn_coefficients  # noqa: E402
from cryptoface.train.model import HerPN, PatchCNN, count_parameters  # noqa: E402


def randomize(model: PatchCNN, seed: int = 0) -> PatchCNN:
    """Random γ/β and non-trivial running statistics everywhere, then eval mode."""
    g = torch.Generator().manual_seed(seed)

    def u(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, HerPN):
                mod.weight.copy_(u(mod.weight.shape, 0.5, 1.5) * torch.sign(u(mod.weight.shape, -1, 2)))
                mod.bias.copy_(u(mod.bias.shape, -0.5, 0.5))
            elif isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.running_mean.copy_(u((c,), -0.5, 1.5))
                mod.running_var.copy_(u((c,), 0.5, 3.0))
                if mod.affine:
                    mod.weight.copy_(u((c,), 0.5, 1.5))
                    mod.bias.copy_(u((c,), -0.3, 0.3))
    return model.eval()


def inputs(resolution: int, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, 3, resolution, resolution))


def torch_forward(model: PatchCNN, x: np.ndarray, dtype) -> np.ndarray:
    m = model.to(dtype)
    with torch.no_grad():
        out = m(torch.from_numpy(x).to(dtype)).to(torch.float64).numpy()
    model.to(torch.float64)
    return out


@pytest.fixture(scope="module")
def net64():
    torch.manual_seed(0)
    return randomize(PatchCNN(64), seed=1).double()


@pytest.mark.parametrize("resolution", [64, 96, 128])
def test_parameter_counts(resolution):
    model = PatchCNN(resolution)
    expected = spec.PARAMETER_COUNTS[spec.architecture_for(resolution)]
    assert count_parameters(model.nets) + count_parameters(model.linear) == expected
    assert model.inference_parameter_count() == expected
    assert count_parameters(model.nets[0]) == 170_448


def test_forward_train_shapes():
    model = PatchCNN(64)
    emb, logits, targets = model.forward_train(torch.zeros(3, 3, 64, 64))
    assert (
        emb.shape == (3, 256) and logits.shape == (12, 4) and targets.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    )


def test_fusion_exact_float64(net64):
    x = inputs(64)
    fused = fuse(net64)
    assert fused.metadata["fusion"]["floored_channels"] == 0
    t = torch_forward(net64, x, torch.float64)
    r = reference.forward(fused, x)
    assert np.abs(t).max() > 1e-2  # not a degenerate all-zero check
    assert np.max(np.abs(r - t)) <= 1e-9 * max(1.0, np.abs(t).max())


def test_fusion_vs_float32(net64):
    x = inputs(64, seed=3)
    r = reference.forward(fuse(net64), x)
    t32 = torch_forward(net64, x, torch.float32)
    assert np.max(np.abs(r - t32)) <= 1e-3 * np.abs(t32).max()


def test_fusion_exact_96():
    torch.manual_seed(2)
    model = randomize(PatchCNN(96), seed=2).double()
    x = inputs(96, n=1, seed=4)
    t = torch_forward(model, x, torch.float64)
    r = reference.forward(fuse(model), x)
    assert np.max(np.abs(r - t)) <= 1e-9 * max(1.0, np.abs(t).max())


def test_save_load_round_trip_exact(net64, tmp_path):
    fused = fuse(net64)
    path = save_model(fused, tmp_path / "m.npz")
    loaded = load_model(path)
    x = inputs(64, n=1, seed=5)
    assert np.array_equal(reference.forward(fused, x), reference.forward(loaded, x))
    assert loaded.metadata["fusion"]["a2_floor"] == DEFAULT_A2_FLOOR


def test_floor_rule_local_bound():
    a2 = np.array([1e-12, -1e-12, 0.0, 0.3])
    a1 = np.array([0.5, -0.2, 0.1, 1.0])
    a0 = np.array([0.1, 0.2, 0.3, 0.4])
    mu = np.array([2.0, -3.0, 0.5, 1.0])
    floor = 1e-6
    new_a2, new_a0, mask = floor_a2(a2, a0, mu, floor)
    assert mask.tolist() == [True, True, True, False]
    assert np.array_equal(np.sign(new_a2), [1, -1, 1, 1]) and new_a2[3] == 0.3 and new_a0[3] == 0.4
    big_b = 10.0
    x = np.linspace(-big_b, big_b, 2001)[:, None]
    before = a2 * x**2 + a1 * x + a0
    after = new_a2 * x**2 + a1 * x + new_a0
    assert np.all(np.abs(after - before) <= floor * big_b**2 * (1 + 1e-12))
    at_mu = np.abs((new_a2 - a2) * mu**2 + (new_a0 - a0))
    assert np.all(at_mu <= 1e-15)  # unchanged at the running mean


def test_floor_rule_in_model():
    model = randomize(PatchCNN(64), seed=7).double()
    herpn = model.nets[0].herpnpool.herpn
    channel = 5
    a2, _, _ = herpn_coefficients(herpn)
    with torch.no_grad():
        herpn.weight[channel] *= 1e-12 / a2[channel]
    assert abs(herpn_coefficients(herpn)[0][channel] - 1e-12) < 1e-18
    fused = fuse(model)
    fz = fused.metadata["fusion"]
    assert fz["floored_channels"] == 1 and fz["floored"] == [f"patch0/pool.q[{channel}]"]
    assert fz["min_abs_a2"] == pytest.approx(1e-12)
    x = inputs(64, n=2, seed=8)
    trace: dict[str, float] = {}
    r = reference.forward(fused, x, trace)
    t = torch_forward(model, x, torch.float64)
    # Only pool channel 5 of patch 0 changed: the embedding error is a2-shift * |x^2 - mu^2| pushed linearly
    # through the head columns of that channel; head = (...) * a2' there, so the a2_floor cancels.
    mu = float(herpn.bn1.running_mean[channel])
    big_b = max(trace["patch0/pool.q"], abs(mu))
    cols = fused.patches[0].head[:, channel * 4 : channel * 4 + 4]
    bound = big_b**2 * np.max(np.sum(np.abs(cols), axis=1))
    err = np.max(np.abs(r - t))
    assert err <= bound + 1e-9 * np.abs(t).max()
    assert bound <= 1e-3 * np.abs(t).max()  # the floor costs (much) less than float32 rounding here
