"""Random fused models with realistic magnitudes, for testing the encrypted engine without torch.

Why calibrated. A monic quadratic squares its input, so ten of them in a row make the forward a degree-1024
polynomial: with fixed i.i.d. weight scales, some seeds/inputs stay O(1) while others overflow (tried: a
fixed a2-like factor 0.35 on N(0, 1)/sqrt(fan_in) conv weights keeps most seeds in O(1..10) but sends a
few to 1e19). Trained models avoid this through their per-channel a2 (1e-1 … 1e-6), so we imitate that:
every linear op that follows a quadratic gets one a2-like factor, picked layer by layer on a fixed
calibration batch (uniform noise in [-1, 1], constant +-1 and +-1 sign patterns) so that the largest |x| the
next quadratic sees is ``TARGET_MAX`` (= 2). A target of 3-4 still let constant inputs grow to 1e3
(at |x| ~ 4 the square dominates b x + c and each quadratic is expanding); at 2 the maps are close to
neutral. Measured over 10 seeds x {64, 96, 128} on uniform, sign, constant and smooth inputs in [-1, 1]:
every quadratic input stays below 5 and embeddings below 10 (the tests check < 50).

Random draws before calibration:

* quadratics: b ~ N(0, 1), c ~ 0.5 N(0, 1);
* stem, conv1, conv2, 1x1 shortcut: N(0, 1) / sqrt(fan_in); identity shortcut_scale: U(0.5, 1.5) per
  channel; shortcut_bias ~ 0.1 N(0, 1);
* head: N(0, 1) / sqrt(256 * n_patches), rescaled so that embedding entries are O(1) (max ``TARGET_MAX``
  on the calibration batch); bias ~ 0.1 N(0, 1).

Calibration factors: the stem is scaled to max |x| = TARGET_MAX; conv1 likewise; conv2 and the shortcut
(conv or scale, and its bias) share one factor so the block output hits TARGET_MAX.
"""

from __future__ import annotations

import numpy as np

from cryptoface.model import spec
from cryptoface.model.fused import FusedBlock, FusedModel, FusedPatchNet, Quadratic
from cryptoface.model.reference import conv2d, quadratic

TARGET_MAX = 2.0


def _quad(rng: np.random.Generator, channels: int) -> Quadratic:
    return Quadratic(b=rng.standard_normal(channels), c=0.5 * rng.standard_normal(channels))


def _conv(rng: np.random.Generator, c_out: int, c_in: int, k: int) -> np.ndarray:
    return rng.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k)


def calibration_batch(seed: int = 0) -> np.ndarray:
    """Deterministic (8, 3, 32, 32) patch batch in [-1, 1] used to pick the scales."""
    rng = np.random.default_rng(seed)
    p = spec.PATCH_SIZE
    shape = (3, p, p)
    return np.stack(
        [
            *rng.uniform(-1.0, 1.0, (4, *shape)),
            np.ones(shape),
            -np.ones(shape),
            np.sign(rng.standard_normal(shape)),
            np.sign(rng.standard_normal(shape)),
        ]
    )


def _scale_to(x: np.ndarray) -> float:
    m = float(np.max(np.abs(x)))
    return TARGET_MAX / m if m > 0 else 1.0


def _random_patch(rng: np.random.Generator, n_patches: int, calib: np.ndarray) -> FusedPatchNet:
    stem = _conv(rng, spec.STEM_CHANNELS, 3, 3)
    x = conv2d(calib, stem)
    f = _scale_to(x)
    stem, x = stem * f, x * f
    blocks = []
    for bs in spec.BLOCKS:
        q1, q2 = _quad(rng, bs.c_in), _quad(rng, bs.c_out)
        conv1, conv2 = _conv(rng, bs.c_out, bs.c_in, 3), _conv(rng, bs.c_out, bs.c_out, 3)
        h = quadratic(x, q1)
        y = conv2d(h, conv1, bs.stride)
        f = _scale_to(y)
        conv1, y = conv1 * f, y * f
        y = conv2d(quadratic(y, q2), conv2)
        kw: dict[str, np.ndarray] = {}
        if bs.identity_shortcut:
            kw["shortcut_scale"] = rng.uniform(0.5, 1.5, bs.c_in)
            sc = h * kw["shortcut_scale"][None, :, None, None]
        else:
            kw["shortcut_conv"] = _conv(rng, bs.c_out, bs.c_in, 1)[:, :, 0, 0]
            kw["shortcut_bias"] = 0.1 * rng.standard_normal(bs.c_out)
            hs = h[:, :, :: bs.stride, :: bs.stride]
            sc = np.einsum("bchw,oc->bohw", hs, kw["shortcut_conv"]) + kw["shortcut_bias"][None, :, None, None]
        f = _scale_to(y + sc)
        conv2, x = conv2 * f, (y + sc) * f
        kw = {k: v * f for k, v in kw.items()}
        blocks.append(FusedBlock(stride=bs.stride, q1=q1, conv1=conv1, q2=q2, conv2=conv2, **kw))
    pool_q = _quad(rng, spec.POOL_CHANNELS)
    z = quadratic(x, pool_q)
    g = spec.POOL_GRID
    n, c, hh, ww = z.shape
    pooled = z.reshape(n, c, g, hh // g, g, ww // g).mean(axis=(3, 5)).reshape(n, c * g * g)
    d = spec.EMBEDDING_DIM
    head = rng.standard_normal((d, d)) / np.sqrt(d * n_patches)
    head = head * _scale_to(pooled @ head.T)
    return FusedPatchNet(stem=stem, blocks=tuple(blocks), pool_q=pool_q, head=head)


def random_model(resolution: int, seed: int = 0) -> FusedModel:
    """A deterministic random FusedModel for ``resolution`` (64, 96 or 128); numpy only."""
    arch = spec.architecture_for(resolution)
    n = spec.grid_for(resolution) ** 2
    rng = np.random.default_rng(seed)
    calib = calibration_batch(seed)
    patches = tuple(_random_patch(rng, n, calib) for _ in range(n))
    return FusedModel(
        architecture=arch,
        resolution=resolution,
        patches=patches,
        bias=0.1 * rng.standard_normal(spec.EMBEDDING_DIM),
        metadata={
            "source": {"description": f"random_model(resolution={resolution}, seed={seed})", "random": True},
        },
    )
