"""The fused CryptoFaceNet: the exact function the encrypted engine evaluates.

Every HerPN is a *monic* per-channel quadratic q(x) = x^2 + b*x + c; its leading factor a2 has been
folded into the next linear operation (conv weights along the input-channel axis, the identity
shortcut's per-channel scale, the 1x1 shortcut conv, or the head). Pooling, the per-patch BatchNorm1d,
the fusion Linear and the final BatchNorm1d are folded into one 256x256 matrix per patch plus one bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryptoface.model import spec


@dataclass(frozen=True)
class Quadratic:
    """Per-channel monic quadratic q(x) = x^2 + b*x + c."""

    b: np.ndarray  # (C,)
    c: np.ndarray  # (C,)

    @property
    def channels(self) -> int:
        return int(self.b.shape[0])


@dataclass(frozen=True)
class FusedBlock:
    """One HerPNConv block after fusion.

    h = q1(x); y = conv2(q2(conv1(h))); out = y + shortcut(h), where shortcut(h) is either
    ``shortcut_scale[c] * h[c]`` (identity blocks) or ``shortcut_conv @ h[:, ::s, ::s] + shortcut_bias``.
    """

    stride: int
    q1: Quadratic
    conv1: np.ndarray  # (c_out, c_in, 3, 3), stride `stride`, padding 1
    q2: Quadratic
    conv2: np.ndarray  # (c_out, c_out, 3, 3), stride 1, padding 1
    shortcut_scale: np.ndarray | None = None  # (c_in,)
    shortcut_conv: np.ndarray | None = None  # (c_out, c_in), 1x1, stride `stride`
    shortcut_bias: np.ndarray | None = None  # (c_out,)

    @property
    def c_in(self) -> int:
        return int(self.conv1.shape[1])

    @property
    def c_out(self) -> int:
        return int(self.conv1.shape[0])


@dataclass(frozen=True)
class FusedPatchNet:
    """One patch network: stem conv, five blocks, pool quadratic, and its 256x256 head block.

    Its contribution to the embedding is ``head @ flatten(avgpool_2x2(pool_q(x)))`` with the flatten
    index ``c * 4 + (y * 2 + x)`` (PyTorch's channel-major order).
    """

    stem: np.ndarray  # (16, 3, 3, 3), stride 1, padding 1
    blocks: tuple[FusedBlock, ...]
    pool_q: Quadratic
    head: np.ndarray  # (256, 256)


@dataclass(frozen=True)
class FusedModel:
    """A whole fused CryptoFaceNet: one FusedPatchNet per patch (raster order) plus the shared bias."""

    architecture: str
    resolution: int
    patches: tuple[FusedPatchNet, ...]
    bias: np.ndarray  # (256,)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> int:
        return spec.grid_for(self.resolution)

    @property
    def n_patches(self) -> int:
        return len(self.patches)

    @property
    def patch_size(self) -> int:
        return spec.PATCH_SIZE
