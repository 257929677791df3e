"""Model-resolution resize of an aligned crop, in numpy, bit-compatible with the training transform.

Training applies ``ToTensor -> Normalize(0.5, 0.5) -> Resize(S, antialias=True)`` to 112x112 crops; on a
tensor, torchvision's Resize is ``F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False,
antialias=True)``. That operator is separable: along each axis, output sample ``i`` is a normalised weighted
sum of input samples ``j`` with

    scale   = n_in / n_out                  (input pixels per output pixel)
    centre  = scale * (i + 0.5)             (in input pixel units, pixel j spans [j, j + 1])
    support = scale if scale > 1 else 1     (triangle half-width; widened only when downsampling)
    j       in [int(centre - support + 0.5), int(centre + support + 0.5)) clipped to [0, n_in)
    weight  = tri((j + 0.5 - centre) / max(scale, 1)),  tri(t) = max(0, 1 - |t|)

then divided by the sum of the weights. Downsampling (112 -> 64, 96) is therefore a triangle (tent) filter
stretched by the scale factor; upsampling (112 -> 128) is plain bilinear with half-pixel centres and
edge-clamped neighbours. Each axis is one (n_out, n_in) matrix, cached per size pair, and the image is
``Wy @ x @ Wx.T`` per channel in float64.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

CROP_SIZE = 112
RESOLUTIONS = (64, 96, 128)


@lru_cache(maxsize=32)
def _weights_cached(n_in: int, n_out: int) -> np.ndarray:
    scale = n_in / n_out
    support = scale if scale > 1.0 else 1.0
    inv = 1.0 / scale if scale > 1.0 else 1.0
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        t = np.abs((j - centre + 0.5) * inv)
        row = np.where(t < 1.0, 1.0 - t, 0.0)
        total = row.sum()
        w[i, lo:hi] = row / total if total > 0 else row
    w.setflags(write=False)
    return w


def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) read-only matrix of the antialiased bilinear resize along one axis."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    return _weights_cached(int(n_in), int(n_out))


def resize_chw(x: np.ndarray, size: int) -> np.ndarray:
    """Resize a (C, H, W) or (B, C, H, W) float array to (..., size, size); see the module docstring."""
    x = np.asarray(x, dtype=np.float64)
    wy = resize_weights(x.shape[-2], size)
    wx = resize_weights(x.shape[-1], size)
    return np.ascontiguousarray(np.matmul(np.matmul(wy, x), wx.T))


def normalize(crop_rgb_uint8: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> (3, H, W) float64 in [-1, 1]: ``(x / 255 - 0.5) / 0.5`` like ToTensor + Normalize."""
    crop = np.asarray(crop_rgb_uint8)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB crop, got {crop.dtype} {crop.shape}")
    x = crop.transpose(2, 0, 1).astype(np.float64) / 255.0
    return (x - 0.5) / 0.5


def to_model_input(crop_rgb_uint8: np.ndarray, resolution: int) -> np.ndarray:
    """Model input (3, S, S) float64 of an aligned 112x112 RGB uint8 crop: normalise, then resize to S.

    Matches ``F.interpolate(((x / 255) - 0.5) / 0.5, size=(S, S), mode="bilinear", align_corners=False,
    antialias=True)`` to float64 rounding (|diff| < 1e-12). Resolutions used by the models: 64, 96, 128.
    """
    x = normalize(crop_rgb_uint8)
    if x.shape[1:] == (resolution, resolution):
        return x
    return resize_chw(x, resolution)
