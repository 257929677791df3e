#!/usr/bin/env python
"""What one 1:N gallery chunk costs in a given CKKS context (issue 20's question: would a separate, small
matching ring make stored templates <= 0.5 MB and 1:N over 10,000 templates <= 10 s?).

    .venv-openfhe/bin/python scripts/bench_match_chunk.py default 13,2 14,2 15,2 16,2

``default`` is the product's parameters (N = 2^16, 23 levels, 9 special primes); ``LOGN,LEVELS`` a ring of
2^LOGN with that many levels at a 43-bit scale and the smallest secure digit count. One chunk = the fresh
level-2 probe x a fresh level-2 gallery ciphertext (relinearised, rescaled), the 8-rotation sum over the 256
template elements, and the dense-answer mask: what the server does per ``slots / 256`` templates. One OpenFHE
thread, median of 5 after a warm-up; prints one JSON line per context.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from cryptoface.backends import create_backend
from cryptoface.match import homomorphic as hm
from cryptoface.match.layout import gallery_layout
from cryptoface.params import REFRESH_SCALE_BITS, default_parameters, secure_parameters

FRESH_LEVEL = 2  # score + dense mask (cryptoface.params.LEVELS.fresh_template())


def measure(which: str, repeats: int = 5) -> dict:
    if which == "default":
        params = default_parameters()
    else:
        logn, levels = map(int, which.split(","))
        params = secure_parameters(levels, log_ring=logn, scale_bits=REFRESH_SCALE_BITS)
    b = create_backend("openfhe", params, threads=1)
    gallery = gallery_layout(b.slots)
    b.generate_keys(sorted({gallery.stride << k for k in range(8)}))
    x = np.random.default_rng(0).uniform(-1, 1, b.slots) / 16
    probe, chunk = (b.encrypt(x, min(FRESH_LEVEL, params.levels)) for _ in range(2))
    mask = np.zeros(b.slots)
    mask[: gallery.capacity] = 1

    def one() -> None:
        s = hm.gallery_scores(b, probe, chunk, gallery, gallery.capacity)
        b.rescale(b.mul_plain(s, b.encode(mask, b.level(s))))

    one()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"context": which, "log_ring": params.log_ring, "levels": params.levels, "dnum": params.key_switch_digits,
            "special_primes": params.special_primes, "templates_per_chunk": gallery.capacity,
            "chunk_ms": round(med * 1000, 2), "s_per_10000_one_thread": round(med * 10000 / gallery.capacity, 2),
            "template_bytes": len(b.serialize(probe))}


if __name__ == "__main__":
    for ctx in sys.argv[1:] or ["default", "13,2"]:
        print(json.dumps(measure(ctx)), flush=True)
