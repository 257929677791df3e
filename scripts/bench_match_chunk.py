#!/usr/bin/env python
"""What 1:N scoring costs per template in a given CKKS context (issue 20's question: would a separate, small
matching ring make stored templates <= 0.5 MB and 1:N over 10,000 templates <= 10 s?).

    .venv-openfhe/bin/python scripts/bench_match_chunk.py default 13,2 14,2 15,2 16,2
    .venv-openfhe/bin/python scripts/bench_match_chunk.py 13,2 --merge 4 --no-dense

A context is ``default`` (the product's parameters: N = 2^16, 21 levels since the clear tail, 9 special primes)
or ``LOGN,LEVELS``: a ring of 2^LOGN with that many levels at a 43-bit scale and the smallest secure digit count.
Fresh probe and gallery ciphertexts are made at the level scoring uses (as the client's refresh makes them); one
gallery chunk holds ``slots / 256`` templates (template n's element j at slot ``S * j + n``, the ring-filling layout of
:mod:`cryptoface.match.layout`).

Without ``--merge`` (the product today): per chunk, the ct x ct product, the 8-rotation sum over the 256
elements and the dense-answer mask. ``--merge R`` (a proposal, not in the product): 2^R chunks share their last
rotations: each does R rotation rounds (steps S, 2S, ...), is masked to the slots whose element index is its
own residue mod 2^R (one level), the 2^R are added and 8 - R rounds finish the sums, so every slot holds a full
score (no partial sum is revealed) and one answer carries 2^R x S scores; ``--no-dense`` leaves out the
dense-answer mask (the merge already packs the answer). The decrypted scores are checked against the clear
cosines. One OpenFHE thread, median of 5 after a warm-up; one JSON line per context.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cryptoface.backends import create_backend
from cryptoface.match.layout import EMBEDDING_DIM, gallery_layout, pack_gallery_slots
from cryptoface.params import REFRESH_SCALE_BITS, default_parameters, secure_parameters

ROUNDS = 8  # log2(EMBEDDING_DIM): rotation rounds of a full element sum


def measure(which: str, merge: int = 0, dense: bool = True, repeats: int = 5) -> dict:
    if which == "default":
        params = default_parameters()
    else:
        logn, levels = map(int, which.split(","))
        params = secure_parameters(levels, log_ring=logn, scale_bits=REFRESH_SCALE_BITS)
    need = 1 + (1 if merge else 0) + (1 if dense else 0)
    if params.levels < need:
        raise SystemExit(f"{which}: {need} levels needed (product, merge mask, dense mask), {params.levels} given")
    b = create_backend("openfhe", params, threads=1)
    gallery = gallery_layout(b.slots)
    s, group = gallery.stride, 1 << merge
    b.generate_keys(sorted({s << k for k in range(ROUNDS)}))
    rng = np.random.default_rng(0)
    probe = rng.normal(size=EMBEDDING_DIM)
    probe /= np.linalg.norm(probe)
    chunks = [rng.normal(size=(gallery.capacity, EMBEDDING_DIM)) for _ in range(group)]
    chunks = [c / np.linalg.norm(c, axis=1, keepdims=True) for c in chunks]
    top = need  # fresh ciphertexts carry exactly the levels scoring uses, as the client's refresh makes them
    probe_ct = b.encrypt(pack_gallery_slots(np.tile(probe, (gallery.capacity, 1)), gallery), top)
    chunk_cts = [b.encrypt(pack_gallery_slots(c, gallery), top) for c in chunks]
    element = (np.arange(b.slots) // s) % EMBEDDING_DIM  # element index j of every slot
    masks = [(element % group == c).astype(float) for c in range(group)]
    answer_mask = np.zeros(b.slots)
    answer_mask[: s * group] = 1.0

    def one() -> object:
        acc = None
        for c, ct in enumerate(chunk_cts):
            x = b.rescale(b.mul(probe_ct, ct))
            for k in range(merge):
                x = b.add(x, b.rotate(x, s << k))
            if merge:
                x = b.rescale(b.mul_plain(x, b.encode(masks[c], b.level(x))))
            acc = x if acc is None else b.add(acc, x)
        for k in range(merge, ROUNDS):
            acc = b.add(acc, b.rotate(acc, s << k))
        return b.rescale(b.mul_plain(acc, b.encode(answer_mask, b.level(acc)))) if dense else acc

    values = b.decrypt(one())
    # slot S*c + n: template n of chunk c (merged: element residue c; unmerged: the one chunk)
    error = max(abs(values[s * c + n] - chunks[c][n] @ probe) for c in range(group) for n in range(gallery.capacity))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    per = gallery.capacity * group
    return {"context": which, "log_ring": params.log_ring, "levels": params.levels, "dnum": params.key_switch_digits,
            "special_primes": params.special_primes, "merge": merge, "dense_mask": dense,
            "templates_per_group": per, "group_ms": round(med * 1000, 2),
            "s_per_10000_one_thread": round(med * 10000 / per, 2), "template_bytes": len(b.serialize(probe_ct)),
            "scores_per_answer": per if not dense or merge else gallery.capacity, "max_abs_error": float(error)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("contexts", nargs="*", default=["default", "13,2"])
    ap.add_argument("--merge", type=int, default=0, help="rotation rounds before 2^R chunks are merged (0: none)")
    ap.add_argument("--no-dense", dest="dense", action="store_false", help="leave out the dense-answer mask")
    args = ap.parse_args()
    for ctx in args.contexts:
        print(json.dumps(measure(ctx, args.merge, args.dense)), flush=True)


if __name__ == "__main__":
    main()
