"""Activation ranges at every HerPN input: measurement on a fused model (numpy) and control in training (torch).

Why it matters. Under CKKS every HerPN evaluates the monic quadratic q(x) = x^2 + b x + c on an encrypted
x, and the engine's scale and bootstrapping assume |x| <= B. The paper's CryptoFaceNet4 reaches
|x| = 2,254 at block 0's second HerPN, so q(x) reaches ~3e6.

Two tools keep |x| small:

* :func:`rescale_herpn_inputs` (exact). Every HerPN input is produced by linear operations only (stem conv,
  conv1, or conv2 + shortcut) and read only by its HerPN, whose three BatchNorms normalise it. Scaling
  channel c of that input by s_c (producer weights times s_c; for an identity shortcut, the previous
  HerPN's gamma/beta times s_c and its conv1 input column divided by s_c) and moving the BatchNorm
  running statistics accordingly (m1' = s m1, v1' = s^2 (v1 + eps) - eps, m2' = s^2 m2 + (s^2 - 1)/sqrt(2),
  v2' = s^4 (v2 + eps) - eps) leaves the eval-mode network unchanged. In training mode BatchNorm uses
  batch statistics and is scale invariant up to eps, so training continues from the same function.
* :class:`RangePenalty` (training). Forward pre-hooks on every HerPN add
  ``mean(relu(|x| - B)^2)`` per HerPN input to the loss, so the fine-tuned weights keep every input below B.

:func:`fused_ranges` measures a fused model file with the numpy reference operators: per layer the exact
max of |x| and its 99.9th percentile (log-spaced histogram, bins 0.1 % wide), plus the number of
non-finite HerPN outputs and embeddings. Layer names follow :mod:`cryptoface.model.reference`'s trace
(``patch{p}/block{i}.q1``, ``patch{p}/block{i}.q2``, ``patch{p}/pool.q``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cryptoface.model import spec
from cryptoface.model.fused import FusedModel
from cryptoface.model.reference import forward

# Log-spaced histogram of |x| for percentiles: 10^-8 .. 10^8, 0.1 % relative bin width.
_LOG_LO, _LOG_HI = -8.0, 8.0
_BINS = round((_LOG_HI - _LOG_LO) / math.log10(1.001))


def layer_names(n_patches: int) -> list[str]:
    """HerPN input names in forward order, as in reference.py's trace."""
    names = []
    for p in range(n_patches):
        for i in range(len(spec.BLOCKS)):
            names += [f"patch{p}/block{i}.q1", f"patch{p}/block{i}.q2"]
        names.append(f"patch{p}/pool.q")
    return names


@dataclass
class RangeStats:
    """Running per-layer statistics of |HerPN input| over many images."""

    maxima: dict[str, float] = field(default_factory=dict)
    hist: dict[str, np.ndarray] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    nonfinite_herpn: int = 0
    nonfinite_embedding: int = 0
    n_images: int = 0

    def add(self, key: str, x: np.ndarray) -> None:
        a = np.abs(x).ravel()
        finite = a[np.isfinite(a)]
        if finite.size:
            self.maxima[key] = max(self.maxima.get(key, 0.0), float(finite.max()))
        logs = np.log10(np.maximum(finite, 10.0**_LOG_LO))
        idx = np.clip(((logs - _LOG_LO) / (_LOG_HI - _LOG_LO) * _BINS).astype(np.int64), 0, _BINS - 1)
        h = self.hist.setdefault(key, np.zeros(_BINS, np.int64))
        h += np.bincount(idx, minlength=_BINS)
        self.count[key] = self.count.get(key, 0) + a.size

    def percentile(self, key: str, q: float) -> float:
        """Upper edge of the histogram bin holding the q-th percentile (q in [0, 100])."""
        h = self.hist[key]
        cum = np.cumsum(h)
        i = int(np.searchsorted(cum, q / 100.0 * cum[-1]))
        return float(min(10.0 ** (_LOG_LO + (i + 1) * (_LOG_HI - _LOG_LO) / _BINS), self.maxima.get(key, math.inf)))

    @property
    def overall_max(self) -> float:
        return max(self.maxima.values()) if self.maxima else 0.0

    def table(self) -> list[dict[str, float | str]]:
        return [
            {"layer": k, "max": self.maxima.get(k, 0.0), "p99.9": self.percentile(k, 99.9)}
            for k in self.hist  # insertion order = forward order
        ]


def fused_forward_ranges(model: FusedModel, x: np.ndarray, stats: RangeStats) -> np.ndarray:
    """Embeddings (B, 256) of model inputs (B, 3, S, S) by the reference forward, recording every HerPN input
    and counting non-finite HerPN outputs and embeddings into ``stats``."""

    def observe(key: str, x_in: np.ndarray, out: np.ndarray) -> None:
        stats.add(key, x_in)
        stats.nonfinite_herpn += int(out.size - np.isfinite(out).sum())

    out = forward(model, np.asarray(x, dtype=np.float64), observe=observe)
    stats.nonfinite_embedding += int(np.size(out) - np.isfinite(out).sum())
    stats.n_images += out.shape[0]
    return out


def fused_ranges(model: FusedModel, batches: Iterable[np.ndarray], stats: RangeStats | None = None) -> RangeStats:
    """Accumulate range statistics over batches of model inputs; returns the stats."""
    stats = stats or RangeStats()
    for batch in batches:
        fused_forward_ranges(model, batch, stats)
    return stats


def squared_norm_stats(embeddings: np.ndarray) -> dict[str, float]:
    """Distribution of the squared template norm ||t||^2 (what the encrypted matcher normalises)."""
    t2 = np.sum(np.asarray(embeddings, np.float64) ** 2, axis=1)
    return {
        "n": int(t2.size),
        "mean": float(t2.mean()),
        "std": float(t2.std()),
        "q0.1": float(np.quantile(t2, 0.001)),
        "q99.9": float(np.quantile(t2, 0.999)),
        "min": float(t2.min()),
        "max": float(t2.max()),
    }


# ---------------------------------------------------------------- torch side (imported lazily)


def herpn_layers(model):  # -> list[tuple[str, HerPN]]
    """(name, HerPN module) of a PatchCNN in forward order, named like the fused trace."""
    out = []
    for p, net in enumerate(model.nets):
        for i, blk in enumerate(net.layers):
            out += [(f"patch{p}/block{i}.q1", blk.herpn1), (f"patch{p}/block{i}.q2", blk.herpn2)]
        out.append((f"patch{p}/pool.q", net.herpnpool.herpn))
    return out


class RangePenalty:
    """Forward pre-hooks collecting ``mean(relu(|x| - bound)^2)`` of every HerPN input while enabled."""

    def __init__(self, model, bound: float) -> None:
        self.bound = float(bound)
        self.terms: list = []
        self.maxima: dict[str, object] = {}  # name -> 0-d tensor on the model's device
        self.enabled = True
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in herpn_layers(model)]

    def _hook(self, name: str):
        import torch

        def hook(_module, inputs):
            if not self.enabled:
                return None
            x = inputs[0]
            a = x.abs()
            self.terms.append(torch.relu(a - self.bound).float().pow(2).mean())
            # Kept as a tensor: float() here would wait for the GPU at every HerPN of every step.
            m = a.detach().amax().float()
            self.maxima[name] = torch.maximum(self.maxima[name], m) if name in self.maxima else m
            return None

        return hook

    def max_seen(self) -> float:
        """Largest |HerPN input| seen since ``maxima`` was last cleared (0 when none)."""
        return max((float(v) for v in self.maxima.values()), default=0.0)

    def pop(self):
        """Sum of the collected terms (0 when none) and reset."""
        total = sum(self.terms) if self.terms else 0.0
        self.terms = []
        return total

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hooks off for a block of evaluation forwards; anything collected meanwhile is dropped after."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True
            self.pop()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def channel_maxima(model, inputs) -> dict[str, object]:
    """Per-channel max |HerPN input| of an eval-mode PatchCNN over an iterable of input batches (torch)."""
    import torch

    maxima: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in herpn_layers(model):

        def hook(_m, inp, name=name):
            a = inp[0].detach().abs().amax(dim=(0, 2, 3)).double()
            maxima[name] = torch.maximum(maxima[name], a) if name in maxima else a

        handles.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return maxima


def _scale_herpn_stats(herpn, s) -> None:
    """Running statistics of a HerPN whose input channels were multiplied by ``s`` (exact in eval mode)."""
    import torch

    bn1, bn2 = herpn.bn1, herpn.bn2
    s = s.to(bn1.running_mean.dtype)
    with torch.no_grad():
        bn1.running_mean.mul_(s)
        bn1.running_var.copy_(s**2 * (bn1.running_var + bn1.eps) - bn1.eps)
        bn2.running_mean.copy_(s**2 * bn2.running_mean + (s**2 - 1.0) / math.sqrt(2.0))
        bn2.running_var.copy_(s**4 * (bn2.running_var + bn2.eps) - bn2.eps)


def _scale_out_channels(weight, s) -> None:
    import torch

    with torch.no_grad():
        weight.mul_(s.to(weight.dtype).view(-1, *([1] * (weight.dim() - 1))))


def rescale_herpn_inputs(model, maxima: dict, target: float) -> dict[str, float]:
    """Scale every HerPN input channel whose max exceeds ``target`` down to ``target`` (exact reparametrisation).

    ``maxima`` comes from :func:`channel_maxima` on the unmodified model. Returns the largest scale-down
    factor per layer (1.0 where nothing changed).
    """
    import torch

    factors: dict[str, float] = {}
    for p, net in enumerate(model.nets):
        producers: list[tuple[str, object, object]] = []  # (name, herpn, how to scale its producer)
        blocks = list(net.layers)
        for i, blk in enumerate(blocks):
            prev = blocks[i - 1] if i > 0 else None
            producers.append((f"patch{p}/block{i}.q1", blk.herpn1, ("stem", net) if prev is None else ("block", prev)))
            producers.append((f"patch{p}/block{i}.q2", blk.herpn2, ("conv", blk.conv1)))
        producers.append((f"patch{p}/pool.q", net.herpnpool.herpn, ("block", blocks[-1])))
        for name, herpn, (kind, src) in producers:
            m = maxima[name].to(torch.float64)
            s = torch.where(m > target, target / m.clamp_min(1e-30), torch.ones_like(m)).to(torch.float32)
            factors[name] = float(1.0 / s.min())
            if bool((s == 1).all()):
                continue
            if kind == "stem":
                _scale_out_channels(src.conv.weight, s)
            elif kind == "conv":
                _scale_out_channels(src.weight, s)
            else:  # output of a residual block: conv2 + shortcut
                _scale_out_channels(src.conv2.weight, s)
                if src.identity_shortcut:
                    with torch.no_grad():
                        src.herpn1.weight.mul_(s.view(-1, 1, 1))
                        src.herpn1.bias.mul_(s.view(-1, 1, 1))
                        src.conv1.weight.div_(s.view(1, -1, 1, 1))
                else:
                    bn = src.shortcut[1]
                    with torch.no_grad():
                        bn.weight.mul_(s)
                        bn.bias.mul_(s)
            _scale_herpn_stats(herpn, s)
    return factors
