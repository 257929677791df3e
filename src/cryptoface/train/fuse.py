"""Fuse an eval-mode :class:`~cryptoface.train.model.PatchCNN` into the :class:`FusedModel` the engine runs.

Why this shape. At inference every BatchNorm is an affine map of its input, so a HerPN collapses to a
per-channel quadratic a2 x^2 + a1 x + a0 (running stats (m_k, v_k) of BN_k, eps = 1e-5):

    a2 = g / sqrt(8 pi (v2 + eps))        a1 = g / (2 sqrt(v1 + eps))
    a0 = beta + g [(1 - m0)/sqrt(2 pi (v0 + eps)) - m1/(2 sqrt(v1 + eps)) - (1 + sqrt(2) m2)/sqrt(8 pi (v2 + eps))]

Under CKKS a general quadratic costs a plaintext multiply (one level) on top of the square; the *monic*
q = x^2 + (a1/a2) x + a0/a2 does not, and the factor a2 is free to absorb into whatever linear operation
reads the HerPN output next: conv1/conv2 along their input channels, the identity shortcut as a
per-channel ``shortcut_scale``, the 1x1 shortcut conv (together with its BatchNorm scale; the BN shift
becomes ``shortcut_bias``). After the last HerPN everything is linear: pool -> per-patch BN1d (affine)
-> slice W_i of the fusion Linear -> final BN1d, so a2(pool), the BN1d scale and the final BN scale are
folded into one 256x256 ``head`` per patch, and every shift (BN1d shifts through W_i, Linear bias, final
BN shift) lands in the single shared ``bias``. All of it is done in float64 so the fused graph equals the
torch model evaluated in float64 up to rounding (~1e-13 relative).

Why a floor on |a2|. The monic form divides by a2; a channel whose a2 is (nearly) zero would give huge
b = a1/a2, c = a0/a2 that no CKKS scale can hold (and a literal 0 is a division by zero). Rule used
here: if |a2| < ``a2_floor`` then a2 is replaced by a2' = sign(a2) * a2_floor (sign(0) := +1) and a0 by
a0' = a0 + (a2 - a2') mu^2, with mu the channel's running mean of x (BN_1's running_mean), so the
quadratic is unchanged at the channel's mean input. The added error is
|a2' - a2| |x^2 - mu^2| <= a2_floor * B^2 for |x|, |mu| <= B, per floored channel, at the HerPN output.
The count, the names of the floored channels and the bound formula are written into the metadata. The
default floor (1e-7) is ~12x below the smallest |a2| of the released CryptoFaceNet4 (1.16e-6), so it
leaves that model untouched.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cryptoface.model import spec
from cryptoface.model.fused import FusedBlock, FusedModel, FusedPatchNet, Quadratic
from cryptoface.train.model import HERMITE_RELU, HerPN, HerPNConv, PatchCNN

if TYPE_CHECKING:  # torch itself is imported at module level only by cryptoface.train.model
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

DEFAULT_A2_FLOOR = 1e-7

FLOOR_RULE = (
    "if |a2| < a2_floor: a2' = sign(a2)*a2_floor (sign(0)=+1), a0' = a0 + (a2 - a2')*mu^2 with mu = running mean of "
    "the HerPN input; the quadratic is exact at mu and off by |a2'-a2|*|x^2-mu^2| <= a2_floor*B^2 for |x|,|mu| <= B"
)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


def _bn_stats(bn: _BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fuse a BatchNorm without running statistics (track_running_stats=False)")
    return _np(bn.running_mean), _np(bn.running_var)


def bn_affine(bn: _BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as y = scale * x + shift (float64, per channel)."""
    mean, var = _bn_stats(bn)
    scale = 1.0 / np.sqrt(var + bn.eps)
    shift = -mean * scale
    if bn.affine:
        w, b = _np(bn.weight), _np(bn.bias)
        scale, shift = w * scale, w * shift + b
    return scale, shift


def herpn_coefficients(herpn: HerPN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a2, a1, a0) of the eval-mode HerPN as a per-channel quadratic, float64."""
    c0, c1, c2 = HERMITE_RELU
    gamma = _np(herpn.weight).reshape(-1)
    beta = _np(herpn.bias).reshape(-1)
    (m0, v0), (m1, v1), (m2, v2) = (_bn_stats(bn) for bn in (herpn.bn0, herpn.bn1, herpn.bn2))
    eps = (herpn.bn0.eps, herpn.bn1.eps, herpn.bn2.eps)
    s0, s1, s2 = (1.0 / np.sqrt(v + e) for v, e in zip((v0, v1, v2), eps, strict=True))
    # z2/sqrt(4 pi) = ((x^2 - 1)/sqrt(2) - m2) s2 * c2
    k2 = c2 * s2 / math.sqrt(2.0)
    a2 = gamma * k2
    a1 = gamma * c1 * s1
    a0 = beta + gamma * (c0 * (1.0 - m0) * s0 - c1 * m1 * s1 - k2 * (1.0 + math.sqrt(2.0) * m2))
    return a2, a1, a0


def floor_a2(
    a2: np.ndarray, a0: np.ndarray, mu: np.ndarray, a2_floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the |a2| floor (see module docstring); returns (a2', a0', mask of floored channels)."""
    mask = np.abs(a2) < a2_floor
    sign = np.where(a2 < 0, -1.0, 1.0)
    new_a2 = np.where(mask, sign * a2_floor, a2)
    new_a0 = np.where(mask, a0 + (a2 - new_a2) * mu * mu, a0)
    return new_a2, new_a0, mask


class _Fuser:
    def __init__(self, a2_floor: float) -> None:
        if not a2_floor > 0:
            raise ValueError(f"a2_floor must be > 0, got {a2_floor}")
        self.a2_floor = float(a2_floor)
        self.floored: list[str] = []
        self.min_abs_a2 = math.inf
        self.max_abs_b = 0.0
        self.max_abs_c = 0.0
        self.per_kind: dict[str, dict[str, float]] = {}

    def herpn(self, herpn: HerPN, name: str, kind: str) -> tuple[Quadratic, np.ndarray]:
        """Monic quadratic and the a2 to fold downstream."""
        a2, a1, a0 = herpn_coefficients(herpn)
        self.min_abs_a2 = min(self.min_abs_a2, float(np.min(np.abs(a2))))
        mu = _np(herpn.bn1.running_mean)
        a2, a0, mask = floor_a2(a2, a0, mu, self.a2_floor)
        self.floored += [f"{name}[{c}]" for c in np.flatnonzero(mask)]
        q = Quadratic(b=a1 / a2, c=a0 / a2)
        mb, mc = float(np.max(np.abs(q.b))), float(np.max(np.abs(q.c)))
        self.max_abs_b, self.max_abs_c = max(self.max_abs_b, mb), max(self.max_abs_c, mc)
        stats = self.per_kind.setdefault(kind, {"max_abs_b": 0.0, "max_abs_c": 0.0, "min_abs_a2": math.inf})
        stats["max_abs_b"] = max(stats["max_abs_b"], mb)
        stats["max_abs_c"] = max(stats["max_abs_c"], mc)
        stats["min_abs_a2"] = min(stats["min_abs_a2"], float(np.min(np.abs(a2))))
        return q, a2

    def block(self, blk: HerPNConv, name: str) -> FusedBlock:
        q1, s1 = self.herpn(blk.herpn1, f"{name}.q1", "q1")
        q2, s2 = self.herpn(blk.herpn2, f"{name}.q2", "q2")
        kw: dict[str, Any] = {}
        if blk.identity_shortcut:
            kw["shortcut_scale"] = s1
        else:
            conv, bn = blk.shortcut[0], blk.shortcut[1]
            scale, shift = bn_affine(bn)
            w = _np(conv.weight)[:, :, 0, 0]
            kw["shortcut_conv"] = scale[:, None] * w * s1[None, :]
            kw["shortcut_bias"] = shift
        return FusedBlock(
            stride=blk.stride,
            q1=q1,
            conv1=_np(blk.conv1.weight) * s1[None, :, None, None],
            q2=q2,
            conv2=_np(blk.conv2.weight) * s2[None, :, None, None],
            **kw,
        )


def fuse(model: PatchCNN, *, a2_floor: float = DEFAULT_A2_FLOOR) -> FusedModel:
    """Fold the eval-mode state (running statistics) of ``model`` into a float64 FusedModel.

    The result computes ``model.eval()(x)`` exactly (up to float64 rounding) unless a channel's |a2| is
    below ``a2_floor``; see the module docstring for that rule. ``metadata["fusion"]`` records the floor,
    the floored channels and the coefficient ranges.
    """
    fz = _Fuser(a2_floor)
    n, d = model.n_patches, spec.EMBEDDING_DIM
    w_lin = _np(model.linear.weight)
    b_lin = _np(model.linear.bias) if model.linear.bias is not None else np.zeros(d)
    r, t = bn_affine(model.bn)  # final BatchNorm1d
    bias = r * b_lin + t
    g2 = spec.POOL_GRID**2
    patches = []
    for i, net in enumerate(model.nets):
        pre = f"patch{i}/"
        blocks = tuple(fz.block(blk, f"{pre}block{j}") for j, blk in enumerate(net.layers))
        pool_q, a2p = fz.herpn(net.herpnpool.herpn, f"{pre}pool.q", "pool")
        s_i, t_i = bn_affine(net.bn)
        w_i = w_lin[:, i * d : (i + 1) * d]
        head = r[:, None] * w_i * (s_i * np.repeat(a2p, g2))[None, :]
        bias = bias + r * (w_i @ t_i)
        patches.append(FusedPatchNet(stem=_np(net.conv.weight), blocks=blocks, pool_q=pool_q, head=head))
    if len(patches) != n:
        raise ValueError(f"model has {len(patches)} patch nets, expected {n}")
    metadata = {
        "fusion": {
            "dtype": "float64",
            "a2_floor": fz.a2_floor,
            "a2_floor_rule": FLOOR_RULE,
            "floored_channels": len(fz.floored),
            "floored": fz.floored[:100],
            "min_abs_a2": fz.min_abs_a2,
            "max_abs_b": fz.max_abs_b,
            "max_abs_c": fz.max_abs_c,
            "per_kind": fz.per_kind,
        }
    }
    return FusedModel(
        architecture=model.architecture,
        resolution=model.resolution,
        patches=tuple(patches),
        bias=bias,
        metadata=metadata,
    )
