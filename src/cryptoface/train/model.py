"""PyTorch CryptoFaceNet (PatchCNN of HerPN backbones), for training, import and fusion.

Module and parameter names mirror the CryptoFace authors' released checkpoints (``nets.<i>.conv``,
``nets.<i>.layers.<j>.{herpn1,conv1,herpn2,conv2,shortcut}``, ``nets.<i>.herpnpool.herpn``,
``nets.<i>.bn``, ``linear``, ``bn``, ``jigsaw``) so their state dicts load with ``strict=True``.
This is the only module of cryptoface that imports torch at module level.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cryptoface.model import spec

BN_EPS = 1e-5

# Coefficients of ReLU in the normalised Hermite basis h0, h1, h2.
HERMITE_RELU = (1.0 / math.sqrt(2.0 * math.pi), 0.5, 1.0 / math.sqrt(4.0 * math.pi))


class HerPN(nn.Module):
    """Hermite polynomial activation with one BatchNorm per basis (AESPA style).

    HerPN(x) = gamma * [z0/sqrt(2 pi) + z1/2 + z2/sqrt(4 pi)] + beta, with z_k = BN_k(h_k(x)),
    h0 = 1, h1 = x, h2 = (x^2 - 1)/sqrt(2); gamma, beta are per-channel (C, 1, 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))
        self.bn0 = nn.BatchNorm2d(channels, eps=BN_EPS, affine=False)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS, affine=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0, c1, c2 = HERMITE_RELU
        z0 = self.bn0(torch.ones_like(x))
        z1 = self.bn1(x)
        z2 = self.bn2((x * x - 1.0) / math.sqrt(2.0))
        return self.weight * (c0 * z0 + c1 * z1 + c2 * z2) + self.bias


class HerPNConv(nn.Module):
    """Pre-activation residual block: h = HerPN1(x); out = conv2(HerPN2(conv1(h))) + shortcut(h)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.herpn1 = HerPN(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.herpn2 = HerPN(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        if stride == 1 and c_in == c_out:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out, eps=BN_EPS),
            )

    @property
    def identity_shortcut(self) -> bool:
        return len(self.shortcut) == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.herpn1(x)
        y = self.conv2(self.herpn2(self.conv1(h)))
        return y + self.shortcut(h)


class HerPNPool(nn.Module):
    """HerPN followed by an adaptive average pool down to 2x2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.herpn = HerPN(channels)
        self.pool = nn.AdaptiveAvgPool2d(spec.POOL_GRID)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.herpn(x))


class Backbone(nn.Module):
    """One patch network: 32x32x3 -> 256 (stem, five HerPNConv blocks, HerPNPool, flatten, BatchNorm1d)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, spec.STEM_CHANNELS, 3, stride=1, padding=1, bias=False)
        self.layers = nn.Sequential(*(HerPNConv(b.c_in, b.c_out, b.stride) for b in spec.BLOCKS))
        self.herpnpool = HerPNPool(spec.POOL_CHANNELS)
        self.bn = nn.BatchNorm1d(spec.EMBEDDING_DIM, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.herpnpool(self.layers(self.conv(x)))
        return self.bn(torch.flatten(x, 1))  # index c * 4 + (y * 2 + x)


class PatchCNN(nn.Module):
    """CryptoFaceNet: one Backbone per 32x32 patch (raster order), fused by Linear + BatchNorm1d.

    ``forward`` returns the 256-d embedding. The jigsaw head (patch-position classifier, training only)
    is evaluated by :meth:`forward_train`, which returns it separately.
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.architecture = spec.architecture_for(resolution)
        self.grid = spec.grid_for(resolution)
        self.n_patches = self.grid**2
        self.nets = nn.ModuleList(Backbone() for _ in range(self.n_patches))
        self.linear = nn.Linear(self.n_patches * spec.EMBEDDING_DIM, spec.EMBEDDING_DIM)
        self.bn = nn.BatchNorm1d(spec.EMBEDDING_DIM, eps=BN_EPS, affine=False)
        self.jigsaw = nn.Linear(spec.EMBEDDING_DIM, self.n_patches)

    def patches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Cut (B, 3, S, S) into (B, 3, 32, 32) patches in raster order (row * grid + col)."""
        p = spec.PATCH_SIZE
        if x.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(f"{self.architecture} expects {self.resolution}x{self.resolution} input, got {x.shape}")
        g = self.grid
        return [x[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p] for r in range(g) for c in range(g)]

    def patch_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-patch 256-d features f_i (after each backbone's BatchNorm1d)."""
        return [net(patch) for net, patch in zip(self.nets, self.patches(x), strict=True)]

    def _embed(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.bn(self.linear(torch.cat(feats, dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(self.patch_features(x))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedding (B, 256), jigsaw logits (N*B, N), jigsaw targets (N*B,)), patch-major."""
        feats = self.patch_features(x)
        logits = self.jigsaw(torch.cat(feats, dim=0))
        targets = torch.arange(self.n_patches, device=x.device).repeat_interleave(x.shape[0])
        return self._embed(feats), logits, targets

    def inference_parameter_count(self) -> int:
        """Trainable parameters of nets + fusion linear (the figure the paper reports)."""
        return count_parameters(self.nets) + count_parameters(self.linear)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
