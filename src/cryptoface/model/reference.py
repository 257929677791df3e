"""Numpy-only clear-text forward of a fused model: the reference the encrypted engine must reproduce."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cryptoface.model import spec
from cryptoface.model.fused import FusedModel, FusedPatchNet, Quadratic

# A trace maps "patch{p}/{layer}" to the largest |HerPN input| seen; callers pass a dict to fill.
Trace = dict[str, float]
# An observer sees every HerPN as it runs: its trace name, its input and its output (range statistics).
Observer = Callable[[str, np.ndarray, np.ndarray], None]


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 1) -> np.ndarray:
    """Cross-correlation of a batch ``x`` (B, C, H, W) with ``w`` (O, C, k, k), zero padding."""
    k = w.shape[-1]
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    # win: (B, C, Ho, Wo, k, k) -> contract C, k, k against w
    return np.einsum("bchwij,ocij->bohw", win, w, optimize=True)


def quadratic(x: np.ndarray, q: Quadratic) -> np.ndarray:
    """Apply the per-channel monic quadratic to (B, C, H, W)."""
    b = q.b[None, :, None, None]
    c = q.c[None, :, None, None]
    return x * x + b * x + c


def _herpn(x: np.ndarray, q: Quadratic, key: str, trace: Trace | None, observe: Observer | None) -> np.ndarray:
    out = quadratic(x, q)
    if trace is not None:
        trace[key] = max(trace.get(key, 0.0), float(np.max(np.abs(x))))
    if observe is not None:
        observe(key, x, out)
    return out


def patch_forward(net: FusedPatchNet, x: np.ndarray, trace: Trace | None = None, prefix: str = "",
                  observe: Observer | None = None) -> np.ndarray:
    """One patch network on (B, 3, 32, 32); returns its (B, 256) head contribution (no bias)."""
    x = conv2d(x, net.stem, 1, 1)
    for i, blk in enumerate(net.blocks):
        h = _herpn(x, blk.q1, f"{prefix}block{i}.q1", trace, observe)
        y = conv2d(h, blk.conv1, blk.stride, 1)
        y = conv2d(_herpn(y, blk.q2, f"{prefix}block{i}.q2", trace, observe), blk.conv2, 1, 1)
        if blk.shortcut_scale is not None:
            sc = h * blk.shortcut_scale[None, :, None, None]
        else:
            hs = h[:, :, :: blk.stride, :: blk.stride]
            sc = np.einsum("bchw,oc->bohw", hs, blk.shortcut_conv, optimize=True)
            sc = sc + blk.shortcut_bias[None, :, None, None]
        x = y + sc
    return pool_head(_herpn(x, net.pool_q, f"{prefix}pool.q", trace, observe), net.head)


def pool_head(z: np.ndarray, head: np.ndarray) -> np.ndarray:
    """The head contribution (B, 256) of the pool quadratic's output ``z`` (B, C, H, W): 2x2 average pool, then
    the head block on the flatten index ``c * 4 + (y * 2 + x)``."""
    bsz, ch, hh, ww = z.shape
    g = spec.POOL_GRID
    pooled = z.reshape(bsz, ch, g, hh // g, g, ww // g).mean(axis=(3, 5))  # (B, C, 2, 2)
    return pooled.reshape(bsz, ch * g * g) @ head.T


def split_patches(x: np.ndarray, grid: int) -> list[np.ndarray]:
    """Cut (B, 3, S, S) into grid*grid patches of (B, 3, 32, 32) in raster order."""
    p = spec.PATCH_SIZE
    return [x[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p] for r in range(grid) for c in range(grid)]


def forward(
    model: FusedModel, x: np.ndarray, trace: Trace | None = None, observe: Observer | None = None
) -> np.ndarray:
    """Embedding(s) of normalised, resized input(s): (3, S, S) -> (256,), (B, 3, S, S) -> (B, 256).

    ``trace`` collects the largest |HerPN input| per layer; ``observe`` is called at every HerPN."""
    x = np.asarray(x, dtype=np.float64)
    single = x.ndim == 3
    if single:
        x = x[None]
    s = model.resolution
    if x.shape[1:] != (3, s, s):
        raise ValueError(f"input must be (B, 3, {s}, {s}) for {model.architecture}, got {x.shape}")
    out = np.broadcast_to(model.bias, (x.shape[0], spec.EMBEDDING_DIM)).copy()
    for p, (net, patch) in enumerate(zip(model.patches, split_patches(x, model.grid), strict=True)):
        out += patch_forward(net, patch, trace, prefix=f"patch{p}/", observe=observe)
    return out[0] if single else out
