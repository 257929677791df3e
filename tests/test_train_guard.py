"""LFW guard: identity strings used for training vs LFW names, and the embedding guard itself."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cryptoface.train.guard import run_guard

SHARED = Path(__file__).resolve().parents[2] / "shared"
LFW = SHARED / "data" / "lfw"
TRAIN = SHARED / "data" / "faces-train"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_run_guard_image_and_identity_rules() -> None:
    rng = np.random.default_rng(0)
    lfw = _unit(rng.standard_normal((6, 128)))
    lfw_names = [f"P{i}/P{i}_0001.jpg" for i in range(6)]
    clean = _unit(rng.standard_normal((4, 128)))
    copy = lfw[2:3] + 0.05 * rng.standard_normal((1, 128))  # near-duplicate of an LFW photo
    # 8 crops of one labelled identity, each only ~0.40 to LFW person P4, their mean ~0.8
    noise = rng.standard_normal((8, 128))
    noise -= (noise @ lfw[4])[:, None] * lfw[4][None, :]  # orthogonal to P4: each cos = 1/sqrt(1 + 2.3^2)
    noise = _unit(noise) * 2.3
    ident = lfw[4] + noise
    emb = np.concatenate([clean, copy, ident])
    ids = ["", "aaf:1", "celeba:1", "celeba:1", ""] + ["celeba:9"] * 8
    res = run_guard(emb, ids, lfw_names, lfw, threshold=0.45, identity_threshold=0.5)
    assert res.keep[:4].all()
    assert not res.keep[4] and res.nearest[4] == "P2/P2_0001.jpg"
    assert (res.max_cos[5:] < 0.45).all(), "the identity's crops pass the image rule one by one"
    assert not res.keep[5:].any() and res.dropped_identities == ["celeba:9"]
    assert res.summary()["dropped"] == 9 and res.dropped_images == 1


@pytest.mark.shared
def test_no_lfw_name_among_training_identities() -> None:
    """The labelled identities training uses are CelebA / All-Age-Faces numbers, never an LFW name.

    Honest scope: the sources carry no person names, so this string check can only show that no LFW name
    slipped into the identity column (e.g. from a future source with names); that the *people* differ is
    what the embedding guard (``run_guard``) checks.
    """
    if not (LFW / "lfw-names.txt").is_file() or not (TRAIN / "index.csv").is_file():
        pytest.skip("../shared/data (LFW names, faces-train index) is absent")
    from cryptoface.train.data import labelled_identities, read_index

    index = read_index(TRAIN)
    used = labelled_identities(index, range(len(index)))  # what training uses as classes (>= 2 images)
    every = {i for i in index.identity if i}
    assert used and set(used) <= every
    lfw_names = {ln.split()[0].lower() for ln in (LFW / "lfw-names.txt").read_text().splitlines() if ln.strip()}
    assert len(lfw_names) == 5749

    def variants(ident: str) -> set[str]:
        tail = ident.split(":", 1)[-1]
        return {v.lower() for v in (ident, tail, tail.replace(" ", "_"))}

    hits = sorted(i for i in every if variants(i) & lfw_names)
    assert not hits, f"LFW names among training identities: {hits[:10]}"
    assert all(re.fullmatch(r"(celeba|aaf):\d+", i) for i in every), "an identity string is not a numeric id"


@pytest.mark.shared
def test_guard_drops_lfw_photos_themselves() -> None:
    """An LFW pair photo (and its mirror image) smuggled into the training crops is dropped."""
    if not (LFW / "pairs.txt").is_file():
        pytest.skip("../shared/data/lfw is absent")
    from cryptoface.eval.embedders import SFaceEmbedder
    from cryptoface.eval.lfw import aligned_crops, read_pairs

    pairs = read_pairs(LFW / "pairs.txt")
    names = sorted(set(pairs.left) | set(pairs.right))[::500][:12]
    crops, _ = aligned_crops(LFW, names, progress=False)
    emb = SFaceEmbedder()
    lfw_emb = emb.embed([crops[n] for n in names])
    smuggled = emb.embed([crops[n] for n in names[:6]] + [np.ascontiguousarray(crops[n][:, ::-1]) for n in names[:6]])
    res = run_guard(smuggled, [""] * 12, names, lfw_emb)
    assert not res.keep.any(), f"guard let through: {res.max_cos}"
