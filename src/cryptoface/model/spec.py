"""CryptoFaceNet architecture constants shared by training, export and the encrypted engine."""

from __future__ import annotations

from dataclasses import dataclass

PATCH_SIZE = 32
EMBEDDING_DIM = 256
STEM_CHANNELS = 16
POOL_GRID = 2  # HerPNPool averages each channel down to 2x2
POOL_CHANNELS = 64


@dataclass(frozen=True)
class BlockSpec:
    """One pre-activation HerPNConv block: c_in -> c_out with the given stride on conv1/shortcut."""

    c_in: int
    c_out: int
    stride: int

    @property
    def identity_shortcut(self) -> bool:
        return self.stride == 1 and self.c_in == self.c_out


BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(16, 16, 1),
    BlockSpec(16, 32, 2),
    BlockSpec(32, 32, 1),
    BlockSpec(32, 64, 2),
    BlockSpec(64, 64, 1),
)

ARCHITECTURES: dict[int, str] = {64: "CryptoFaceNet4", 96: "CryptoFaceNet9", 128: "CryptoFaceNet16"}
PARAMETER_COUNTS: dict[str, int] = {
    "CryptoFaceNet4": 944_192,
    "CryptoFaceNet9": 2_124_112,
    "CryptoFaceNet16": 3_776_000,
}


def grid_for(resolution: int) -> int:
    """Patches per side for an input resolution (64 -> 2, 96 -> 3, 128 -> 4)."""
    if resolution not in ARCHITECTURES:
        raise ValueError(f"resolution must be one of {sorted(ARCHITECTURES)}, got {resolution}")
    return resolution // PATCH_SIZE


def architecture_for(resolution: int) -> str:
    """Model name for an input resolution."""
    grid_for(resolution)
    return ARCHITECTURES[resolution]
