"""Tensor layouts: where every (patch, channel, y, x) element of a stage's tensor lives in the ciphertexts.

All layouts here are *planar*: the H x W plane of one (patch, channel) is stored with one pixel order
``pos[y, x]`` shared by every plane of the stage, at a per-plane base slot. A plane may be stored several
times (``copies``) when a ciphertext has room; the copies make channel rotations cyclic over a half- or
quarter-filled ciphertext, which halves the number of diagonals. Slot ``base + pos[y, x]`` of ciphertext
``ct`` holds the element; every other slot of every ciphertext is exactly zero after each engine step
(see :mod:`cryptoface.engine.evaluator`).

Layout families (the pixel order and the channel multiplexing per stage, see :func:`stage_layouts`):

* ``raster`` — every stage dense raster, channel-outer/patch-inner ``slot = (c * G + g) * HW + pixel``.
  A stride-2 conv into a dense raster output reads non-uniformly offset sources (hundreds of distinct
  offsets per tap), so it is correct but costly.
* ``multiplexed`` — stage 1 dense raster; after a stride-2 conv the output stays on the 32 x 32 grid
  with the k*k channels of a group interleaved in the gaps (the MPCNN multiplexed layout, gap 2 then 4):
  stride-2 convs have uniform offsets, stride-1 convs have (2k-1)^2 spatial offsets per group pair.
* ``polyphase`` — the client encrypts the input in a two-level polyphase (space-to-depth) order so that
  both stride-2 convs read uniformly offset sources and write dense outputs; stride-1 convs in a
  polyphase order have up to 49 spatial offsets instead of 9.
* ``phased`` — the client encrypts the input in a one-level polyphase order with the phase outside the
  patches (:func:`phase_outer`); stage 1 pays ~2x on its stride-1 convs (phases mix), the first stride-2
  conv writes a dense raster stage 2 (optimal stride-1 convs), the second writes stage 3 on the 16 x 16
  grid with 4 channels multiplexed in the gaps.
* ``interleaved`` (default) — stage 1 dense raster; the first stride-2 conv moves the patches into the gaps
  of the 32 x 32 grid (``patch_sub``: a conv never mixes patches, so stage 2's stride-1 convs are optimal),
  the second keeps them there and multiplexes 2 (one patch group) or 4 channels in the remaining gaps
  (gap 4). The input is a dense raster (3 planes per patch), so a face is as few ciphertexts as its
  values need: Net4 and Net9 one (32.5 MB at 30 levels), Net16 two. Cycling the 3 input channels over
  stage 1's 16 planes (one input ciphertext per stage-1 ciphertext) would cut the stem from 180 to 72
  diagonals on Net4, but doubles Net4's upload and makes Net9's five times larger for ~2-6 % of the
  modelled time (``plan.compare_families`` style counts: Net4 310 vs 317 s, Net9 856 vs 910 s).

Counts for each family are produced by :func:`cryptoface.engine.plan.compare_families`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryptoface.engine.template import TEMPLATE_SCALE
from cryptoface.model import spec

FAMILIES = ("raster", "multiplexed", "polyphase", "phased", "interleaved")
DEFAULT_FAMILY = "interleaved"  # fewest diagonals and least modelled time at 64/96/128 (plan.compare_families)


@dataclass(frozen=True)
class TemplateLayout:
    """Layout of the 256-d embedding ciphertext.

    Element j sits at slots ``j * stride + b * 256 * stride`` for every ``b < replicas`` (zeros elsewhere) and
    the ciphertext holds ``scale * e`` (default: the engine's :data:`~cryptoface.engine.template.TEMPLATE_SCALE`,
    so matching maps ``||t||^2`` onto its Chebyshev interval with a constant add). ``replicas = 1`` is a single
    copy; the engine's default is ``TemplateLayout(1, slots // 256)``: element j at every slot ``= j (mod 256)``.
    :meth:`pack` / :meth:`unpack` apply / remove the scale.
    """

    stride: int
    replicas: int = 1
    scale: float = TEMPLATE_SCALE

    def __post_init__(self) -> None:
        if self.stride < 1 or self.stride > 128 or self.stride & (self.stride - 1):
            raise ValueError(f"template stride must be a power of two <= 128, got {self.stride}")
        if self.replicas < 1 or self.replicas & (self.replicas - 1):
            raise ValueError(f"template replicas must be a power of two >= 1, got {self.replicas}")
        if not self.scale > 0:
            raise ValueError(f"template scale must be positive, got {self.scale}")

    @property
    def period(self) -> int:
        """Slots between two replicas of the same element."""
        return spec.EMBEDDING_DIM * self.stride

    @property
    def span(self) -> int:
        """Slots the layout needs (all replicas)."""
        return self.period * self.replicas

    def slots_of(self, dim: int = spec.EMBEDDING_DIM) -> np.ndarray:
        """Slot of each element in replica 0."""
        return np.arange(dim) * self.stride

    def all_slots(self, dim: int = spec.EMBEDDING_DIM) -> np.ndarray:
        """(replicas, dim) slots of every copy of every element."""
        return np.arange(self.replicas)[:, None] * self.period + self.slots_of(dim)[None, :]

    def pack(self, values: np.ndarray, slots: int) -> np.ndarray:
        """``scale * values`` at every replica, zeros elsewhere."""
        if self.span > slots:
            raise ValueError(f"template layout needs {self.span} slots, the ring has {slots}")
        v = np.asarray(values, dtype=np.float64)
        out = np.zeros(slots)
        out[self.all_slots(len(v))] = self.scale * v[None, :]
        return out

    def unpack(self, vector: np.ndarray, dim: int = spec.EMBEDDING_DIM) -> np.ndarray:
        """The embedding (scale removed) read from replica 0."""
        return np.asarray(vector)[self.slots_of(dim)] / self.scale


@dataclass(frozen=True, eq=False)
class PlanarLayout:
    """A (patches, channels, height, width) tensor spread over ``n_cts`` ciphertexts of ``slots`` slots.

    ``ct[r, g, c]`` / ``base[r, g, c]`` give the ciphertext and base slot of copy ``r`` of plane (g, c)
    (``ct == -1`` for copies that do not exist); ``pos[y, x]`` the slot of pixel (y, x) within a plane.
    """

    name: str
    shape: tuple[int, int, int, int]
    slots: int
    n_cts: int
    ct: np.ndarray  # (copies, n, C) int64, -1 = no such copy
    base: np.ndarray  # (copies, n, C) int64
    pos: np.ndarray  # (H, W) int64

    @property
    def n_patches(self) -> int:
        return self.shape[0]

    @property
    def channels(self) -> int:
        return self.shape[1]

    def element_slots(self, copy: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(ct, slot) arrays of shape (n, C, H, W) for one copy (-1 where the copy is absent)."""
        ct = np.broadcast_to(self.ct[copy][:, :, None, None], self.shape)
        slot = self.base[copy][:, :, None, None] + self.pos[None, None]
        return ct, np.where(ct >= 0, slot, -1)

    def occupied(self) -> list[np.ndarray]:
        """Per ciphertext, the sorted slots that hold an element (all copies)."""
        out: list[list[np.ndarray]] = [[] for _ in range(self.n_cts)]
        for r in range(self.ct.shape[0]):
            cts, slots = self.element_slots(r)
            for j in range(self.n_cts):
                out[j].append(slots[cts == j])
        return [np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for v in out]

    def validate(self) -> None:
        """Raise ValueError if two elements share a slot or a slot is out of range."""
        if self.pos.min() < 0:
            raise ValueError("negative pixel position")
        for j, s in enumerate(self.occupied()):
            if s.size and (s[0] < 0 or s[-1] >= self.slots):
                raise ValueError(f"{self.name}: slot out of range in ciphertext {j}")
            if np.any(np.diff(s) == 0):
                raise ValueError(f"{self.name}: two elements share a slot in ciphertext {j}")
        if np.any(self.ct[0] < 0):
            raise ValueError(f"{self.name}: copy 0 must exist for every plane")

    def pack(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Slot vectors (one per ciphertext) of a (n, C, H, W) tensor, every copy written."""
        tensor = np.asarray(tensor, dtype=np.float64)
        if tensor.shape != self.shape:
            raise ValueError(f"{self.name}: expected shape {self.shape}, got {tensor.shape}")
        out = np.zeros((self.n_cts, self.slots))
        for r in range(self.ct.shape[0]):
            cts, slots = self.element_slots(r)
            ok = cts >= 0
            out[cts[ok], slots[ok]] = tensor[ok]
        return list(out)

    def channel_vector(self, values_per_channel: np.ndarray) -> list[np.ndarray]:
        """Per ciphertext, ``values[g, c]`` (shape (n, C) or (C,)) at every slot of plane (g, c)."""
        v = np.broadcast_to(np.asarray(values_per_channel, dtype=np.float64), self.shape[:2])
        return self.pack(np.broadcast_to(v[:, :, None, None], self.shape).copy())

    def unpack(self, vectors: list[np.ndarray]) -> np.ndarray:
        """The (n, C, H, W) tensor read from copy 0."""
        cts, slots = self.element_slots(0)
        arr = np.asarray(vectors)
        return arr[cts, slots]


# -- pixel orders -------------------------------------------------------------------------------------
def raster_order(h: int, w: int) -> np.ndarray:
    return np.arange(h * w, dtype=np.int64).reshape(h, w)


def polyphase_order(h: int, w: int, depth: int) -> np.ndarray:
    """Recursive space-to-depth order: phase (y % 2, x % 2) blocks of the half-size order, ``depth`` times.

    With depth d the even-even pixels (y, x) = (2i, 2j) occupy the first quarter in the order of
    ``polyphase_order(h/2, w/2, d-1)``, so a stride-2 conv reads a uniformly offset source per tap.
    """
    if depth == 0:
        return raster_order(h, w)
    inner = polyphase_order(h // 2, w // 2, depth - 1)
    quarter = (h // 2) * (w // 2)
    y, x = np.mgrid[0:h, 0:w]
    phase = (y % 2) * 2 + (x % 2)
    return (phase * quarter + inner[y // 2, x // 2]).astype(np.int64)


def gap_order(h: int, w: int, gap: int) -> np.ndarray:
    """Pixel (y, x) at (gap*y, gap*x) of a (gap*h) x (gap*w) raster grid."""
    y, x = np.mgrid[0:h, 0:w]
    return (gap * y * (gap * w) + gap * x).astype(np.int64)


# -- constructors -------------------------------------------------------------------------------------
def planar(
    name: str,
    shape: tuple[int, int, int, int],
    slots: int,
    pos: np.ndarray,
    block: int,
    group: int = 1,
    sub: np.ndarray | None = None,
    replicate: bool = True,
    patch_sub: np.ndarray | None = None,
    sizes: list[int] | None = None,
    patch_group: int | None = None,
) -> PlanarLayout:
    """Channel-outer/patch-inner layout: plane (g, c) at ``(c // group) * pitch + g * block + sub[c % group]``.

    With ``patch_sub`` (m entries) every ``q = patch_group or m`` patches of a ciphertext share a block, local
    patch ``g`` at offset ``(g // q) * block + patch_sub[g % q]`` (interleaved in the gaps of the pixel order
    like multiplexed channels, but a conv never mixes patches). ``sizes`` (patches per ciphertext) overrides
    the balanced split, e.g. to keep the previous stage's patch groups together.

    ``G`` patches share a ciphertext (as many as fit, balanced over the ciphertexts). When the number of
    channel groups is a power of two the pitch is ``slots / (groups * k)``, so a channel rotation is cyclic
    even when the ciphertext is not full (e.g. 3 of 4 patches per ciphertext); otherwise it is the content
    ``G * block``. With room for k >= 2 times the content (power of two) and ``replicate``, copy ``r`` sits
    ``r * slots / k`` further.
    """
    n, c, _, _ = shape
    groups = -(-c // group)
    if sub is None:
        sub = np.zeros(group, np.int64)
    per_patch = groups * block
    if per_patch > slots:
        raise ValueError(f"{name}: one patch needs {per_patch} slots > {slots}")
    m = 1 if patch_sub is None else (patch_group or len(patch_sub))
    if patch_sub is not None and m > len(patch_sub):
        raise ValueError(f"{name}: patch_group {m} > {len(patch_sub)} patch offsets")
    if sizes is None:
        g_max = min(n, m * (slots // per_patch))
        n_cts = -(-n // g_max)
        # balance patches over the ciphertexts
        sizes = [n // n_cts + (1 if j < n % n_cts else 0) for j in range(n_cts)]
    n_cts = len(sizes)
    if sum(sizes) != n or max(-(-s // m) for s in sizes) * per_patch > slots:
        raise ValueError(f"{name}: patches per ciphertext {sizes} do not fit")
    copies_max = max(slots // (per_patch * -(-s // m)) if replicate else 1 for s in sizes)
    copies_max = 1 << (copies_max.bit_length() - 1)
    ct = -np.ones((copies_max, n, c), np.int64)
    base = np.zeros((copies_max, n, c), np.int64)
    p = 0
    chans = np.arange(c)
    cyclic = groups & (groups - 1) == 0
    for j, size in enumerate(sizes):
        chunk = -(-size // m) * block  # one channel group of the ciphertext's patches
        pitch = slots // groups if cyclic else chunk
        copies = pitch // chunk if replicate and cyclic else (slots // (chunk * groups) if replicate else 1)
        copies = 1 << (copies.bit_length() - 1)
        for gl in range(size):
            poff = gl * block if patch_sub is None else (gl // m) * block + int(patch_sub[gl % m])
            for r in range(copies):
                ct[r, p + gl] = j
                if cyclic:  # copies r * slots / copies: a shift group, so copies of rotations line up
                    base[r, p + gl] = ((chans // group) * (pitch // copies) + poff + r * (slots // copies)
                                       + sub[chans % group])
                else:
                    base[r, p + gl] = r * chunk * groups + (chans // group) * chunk + poff + sub[chans % group]
        p += size
    lay = PlanarLayout(name, shape, slots, n_cts, ct, base, pos)
    return lay


def patch_groups(n: int, slots: int, per_patch: int) -> list[int]:
    """Patches per ciphertext of :func:`planar` for ``per_patch`` slots per patch (balanced)."""
    g_max = min(n, slots // per_patch)
    n_cts = -(-n // g_max)
    return [n // n_cts + (1 if j < n % n_cts else 0) for j in range(n_cts)]


def phase_outer(name: str, shape: tuple[int, int, int, int], slots: int, sizes: list[int]) -> PlanarLayout:
    """One-level polyphase order with the phase *outside* the patches: pixel (y, x) of plane (g, c) at
    ``(c % k) * 4P + phase(y % 2, x % 2) * P + g_local * HW/4 + raster(y // 2, x // 2)``.

    ``P`` is the phase pitch (the patches of one ciphertext, ``sizes`` = the next stage's raster patches per
    ciphertext, rounded up to a power of two) and ``k`` channels share a ciphertext. The even-even pixels are
    then exactly the next stage's raster :func:`planar` layout (channel pitch 4P there) up to a per-channel
    shift, so a stride-2 conv reads one uniformly shifted source per tap and channel pair for every patch;
    a stride-1 conv crosses phases: per tap up to four offsets, merged across neighbouring channels.
    """
    n, c, h, w = shape
    block = (h // 2) * (w // 2)
    phase_pitch = 1 << (max(sizes) * block - 1).bit_length()
    k = min(slots // (4 * phase_pitch), 1 << (c - 1).bit_length())
    if k < 1:
        raise ValueError(f"{name}: {max(sizes)} patches of {block} pixels do not fit a quarter of {slots} slots")
    chunks = -(-c // k)
    ct = np.zeros((1, n, c), np.int64)
    base = np.zeros((1, n, c), np.int64)
    chans = np.arange(c)
    p = 0
    for j, size in enumerate(sizes):
        for gl in range(size):
            ct[0, p + gl] = j * chunks + chans // k
            base[0, p + gl] = (chans % k) * 4 * phase_pitch + gl * block
        p += size
    y, x = np.mgrid[0:h, 0:w]
    pos = ((y % 2) * 2 + (x % 2)) * phase_pitch + (y // 2) * (w // 2) + x // 2
    return PlanarLayout(name, shape, slots, len(sizes) * chunks, ct, base, pos.astype(np.int64))


def _shape(n: int, c: int, h: int) -> tuple[int, int, int, int]:
    return (n, c, h, h)


def stage_layouts(n_patches: int, slots: int, family: str = DEFAULT_FAMILY) -> dict[str, PlanarLayout]:
    """Layouts of the four tensor stages: ``input`` (3x32x32), ``s1`` (16x32x32), ``s2`` (32x16x16), ``s3``.

    ``s3`` is 64x8x8. The client packs the input in the ``input`` layout at encryption time.
    """
    n = n_patches
    p = spec.PATCH_SIZE
    if family == "raster":
        orders = {32: raster_order(32, 32), 16: raster_order(16, 16), 8: raster_order(8, 8)}
        lays = {
            "input": planar("input", _shape(n, 3, p), slots, orders[32], 1024),
            "s1": planar("s1", _shape(n, 16, p), slots, orders[32], 1024),
            "s2": planar("s2", _shape(n, 32, 16), slots, orders[16], 256),
            "s3": planar("s3", _shape(n, 64, 8), slots, orders[8], 64),
        }
    elif family == "polyphase":
        lays = {
            "input": planar("input", _shape(n, 3, p), slots, polyphase_order(32, 32, 2), 1024),
            "s1": planar("s1", _shape(n, 16, p), slots, polyphase_order(32, 32, 2), 1024),
            "s2": planar("s2", _shape(n, 32, 16), slots, polyphase_order(16, 16, 1), 256),
            "s3": planar("s3", _shape(n, 64, 8), slots, raster_order(8, 8), 64),
        }
    elif family == "multiplexed":
        sub2 = np.array([(i // 2) * 32 + i % 2 for i in range(4)], np.int64)
        sub3 = np.array([(i // 4) * 32 + i % 4 for i in range(16)], np.int64)
        lays = {
            "input": planar("input", _shape(n, 3, p), slots, raster_order(32, 32), 1024),
            "s1": planar("s1", _shape(n, 16, p), slots, raster_order(32, 32), 1024),
            "s2": planar("s2", _shape(n, 32, 16), slots, gap_order(16, 16, 2), 1024, group=4, sub=sub2),
            "s3": planar("s3", _shape(n, 64, 8), slots, gap_order(8, 8, 4), 1024, group=16, sub=sub3),
        }
    elif family == "phased":
        sizes = patch_groups(n, slots, 32 * 256)  # the s2 raster layout's patches per ciphertext
        sub3 = np.array([(i // 2) * 16 + i % 2 for i in range(4)], np.int64)
        lays = {
            "input": phase_outer("input", _shape(n, 3, p), slots, sizes),
            "s1": phase_outer("s1", _shape(n, 16, p), slots, sizes),
            "s2": planar("s2", _shape(n, 32, 16), slots, raster_order(16, 16), 256),
            "s3": planar("s3", _shape(n, 64, 8), slots, gap_order(8, 8, 2), 256, group=4, sub=sub3),
        }
    elif family == "interleaved":
        psub = np.array([(i // 2) * 32 + i % 2 for i in range(4)], np.int64)  # patches in the 2x2 gaps
        s2 = planar("s2", _shape(n, 32, 16), slots, gap_order(16, 16, 2), 1024, patch_sub=psub)
        sizes2 = [int(v) for v in np.bincount(s2.ct[0, :, 0])]
        if len(sizes2) == 1:  # one patch group: 2 channels in the y gaps fill one ciphertext (no copies)
            s3 = planar("s3", _shape(n, 64, 8), slots, gap_order(8, 8, 4), 1024, group=2,
                        sub=np.array([0, 64], np.int64), patch_sub=psub, sizes=sizes2)
        else:  # 4 channels in the gaps, two of stage 2's patch groups per ciphertext
            sizes3 = [sum(sizes2[i:i + 2]) for i in range(0, len(sizes2), 2)]
            s3 = planar("s3", _shape(n, 64, 8), slots, gap_order(8, 8, 4), 1024, group=4,
                        sub=np.array([0, 2, 64, 66], np.int64), patch_sub=psub, sizes=sizes3,
                        patch_group=max(sizes2))
        s1 = planar("s1", _shape(n, 16, p), slots, raster_order(32, 32), 1024)
        lays = {"input": planar("input", _shape(n, 3, p), slots, raster_order(32, 32), 1024), "s1": s1, "s2": s2,
                "s3": s3}
    else:
        raise ValueError(f"unknown layout family {family!r}; choose one of {FAMILIES}")
    for lay in lays.values():
        lay.validate()
    return lays
