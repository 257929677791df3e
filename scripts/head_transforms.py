"""Exact post-hoc transforms of the embedding (centring, PCA whitening, within-class whitening) on the authors'
CryptoFaceNet4, scored on the in-the-wild validation and on LFW (issue 21's "alternatives" to fine-tuning).

Any affine map W (e - mu) of the embedding folds exactly into the fused head (head_p <- W head_p, bias <- W (bias -
mu)), so it would cost nothing under encryption and leave every HerPN input unchanged. The maps are fitted on the
training crops that training may use (the in-the-wild identities left out); within-class whitening uses their
labelled CelebA identities. Needs the ``train`` extra (torch) and ``../shared``; ~5 min on 2 cores once the LFW
crops are cached (``cryptoface eval lfw`` aligns them). Prints one line per transform.

    .venv/bin/python scripts/head_transforms.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cryptoface.eval.embedders import cosine_scores
from cryptoface.eval.lfw import aligned_crops, read_pairs, summarize
from cryptoface.eval.wild import is_validation_identity, validation_rows, wild_result
from cryptoface.train.data import load_crops, read_index
from cryptoface.train.paper import load_paper_checkpoint
from cryptoface.train.ranges import channel_maxima, rescale_herpn_inputs
from cryptoface.train.train import embed_rows, to_input


def whitening(cov: np.ndarray, shrink: float) -> np.ndarray:
    """(C + shrink * mean eigenvalue * I)^(-1/2), symmetric."""
    lam, u = np.linalg.eigh(cov)
    return (u / np.sqrt(lam + shrink * lam.mean())) @ u.T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    index = read_index(args.shared / "data" / "faces-train")
    crops = load_crops(index, progress=False)
    train_rows = np.array([i for i, who in enumerate(index.identity) if not is_validation_identity(who)])
    wild_rows = np.array(validation_rows(index))
    _, wild_labels = np.unique([index.identity[i] for i in wild_rows], return_inverse=True)
    # the authors' weights with the exact HerPN-input rescale (same function, as configs/paper-rescaled.json)
    model = load_paper_checkpoint(args.shared / "models" / "cryptofacenet4-64x64-paper.ckpt", 64)
    rows = np.sort(np.random.default_rng(1).permutation(train_rows)[:512])
    rescale_herpn_inputs(model, channel_maxima(model, (to_input(crops[rows[i:i + 128]], 64)
                                                       for i in range(0, len(rows), 128))), 32.0)
    train = embed_rows(model, crops, train_rows, 64)
    wild = embed_rows(model, crops, wild_rows, 64)
    pairs = read_pairs(args.shared / "data" / "lfw" / "pairs.txt")
    names = sorted(set(pairs.left) | set(pairs.right))
    lfw_crops, _ = aligned_crops(args.shared / "data" / "lfw", names, None, False)
    lfw = dict(zip(names, embed_rows(model, np.stack([lfw_crops[n] for n in names]), np.arange(len(names)), 64),
                   strict=True))
    left, right = np.stack([lfw[n] for n in pairs.left]), np.stack([lfw[n] for n in pairs.right])

    mu = train.mean(0)
    maps: dict[str, np.ndarray | None] = {"none": None, "centre": np.eye(len(mu))}  # e -> W (e - mu)
    pca = np.cov((train - mu).T)
    for a in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0):
        maps[f"whiten {a}"] = whitening(pca, a)
    ids = np.array([index.identity[i] for i in train_rows])
    celeb = np.flatnonzero(np.char.startswith(ids.astype(str), "celeba:"))
    who, inv, count = np.unique(ids[celeb], return_inverse=True, return_counts=True)
    keep = count[inv] >= 2
    x, inv = train[celeb][keep], inv[keep]
    means = np.stack([x[inv == k].mean(0) if np.any(inv == k) else np.zeros(x.shape[1]) for k in range(len(who))])
    within = np.cov((x - means[inv]).T)
    for a in (0.01, 0.1, 0.3, 1.0):
        maps[f"within-class {a}"] = whitening(within, a)
    print(f"fitted on {len(train_rows)} training crops (within-class: {int(keep.sum())} crops of "
          f"{len(set(ids[celeb][keep]))} CelebA identities); wild {len(wild_rows)} crops; LFW {len(names)} photos")
    for name, w_map in maps.items():
        def f(e: np.ndarray, w_map: np.ndarray | None = w_map) -> np.ndarray:
            return e if w_map is None else (e - mu) @ w_map.T

        w = wild_result(f(wild), wild_labels, bootstrap=0)
        s = summarize(cosine_scores(f(left), f(right)), pairs.same, pairs.fold)
        print(f"{name:18s} wild EER {100 * w['eer']:5.2f} % TAR@1e-3 {100 * w['tar_at_far_1e-3']:5.2f} % | "
              f"LFW {100 * s['accuracy']:5.2f} % +- {100 * s['accuracy_std']:.2f} TAR@1e-3 "
              f"{100 * s['tar_at_far_1e-3']:5.2f} %")


if __name__ == "__main__":
    main()
