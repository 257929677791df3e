"""The numpy model-input resize equals torch's antialiased bilinear F.interpolate."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.face.resize import resize_weights, to_model_input


@pytest.mark.parametrize("size", [64, 96, 128])
def test_matches_torch_interpolate(size):
    torch = pytest.importorskip("torch", reason="torch (the 'train' extra) is not installed")
    functional = torch.nn.functional
    rng = np.random.default_rng(size)
    crop = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    ours = to_model_input(crop, size)
    x = torch.from_numpy(crop.transpose(2, 0, 1).astype(np.float64) / 255.0)
    x = (x - 0.5) / 0.5
    ref = functional.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    assert ours.shape == (3, size, size) and ours.dtype == np.float64
    assert np.max(np.abs(ours - ref[0].numpy())) < 1e-12


def test_weights_rows_sum_to_one_and_are_cached():
    for n_out in (64, 96, 128):
        w = resize_weights(112, n_out)
        assert w.shape == (n_out, 112)
        assert np.allclose(w.sum(axis=1), 1.0, atol=1e-15)
        assert resize_weights(112, n_out) is w
        assert not w.flags.writeable


def test_constant_image_stays_constant():
    crop = np.full((112, 112, 3), 51, np.uint8)
    x = to_model_input(crop, 64)
    assert np.allclose(x, (51 / 255 - 0.5) / 0.5, atol=1e-15)


def test_identity_at_112():
    crop = np.random.default_rng(3).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert np.array_equal(to_model_input(crop, 112), (crop.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5)
