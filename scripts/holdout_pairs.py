"""Verification accuracy of fused model files on the identities a training run held out (numpy forward).

    python scripts/holdout_pairs.py PACK HELD_OUT_FROM.npz MODEL.npz [MODEL.npz ...]

PACK is the training pack the run used; HELD_OUT_FROM is a model file exported by a run with
``holdout_identities`` > 0 (its metadata names them). Every genuine pair of those identities' crops plus
as many seeded impostor pairs is scored with each model; prints the best-threshold accuracy per model.
A model trained on those identities scores in-sample, so compare only models that never saw them.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from cryptoface.face.resize import to_model_input
from cryptoface.model.file import load_model
from cryptoface.model.reference import forward
from cryptoface.train.pack import decode_pack, read_pack
from cryptoface.train.train import training_pairs_threshold


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    pack_path, held_from, *models = argv
    held = set(load_model(held_from).metadata["training"]["data"].get("holdout_identities", []))
    if not held:
        print(f"{held_from} names no held-out identities (trained without holdout_identities)")
        return 2
    pack = read_pack(pack_path)
    rows = np.array([i for i, k in enumerate(pack.index.identity) if k in held])
    crops = decode_pack(pack, progress=False)[rows]
    ids = [pack.index.identity[i] for i in rows]
    x = np.stack([to_model_input(c, 64) for c in crops])
    for path in models:
        model = load_model(path)
        emb = np.concatenate([forward(model, x[i : i + 64]) for i in range(0, len(x), 64)])
        print(path, f"{len(rows)} crops", json.dumps(training_pairs_threshold(emb, ids)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
