"""``cryptoface bench-match``: encrypted matching (normalise, 1:1, packed 1:N, store) on a real CKKS backend.

Argument parsing and printing only; what is measured, and how, is :mod:`cryptoface.bench.matching`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptoface.cli.device import add_device_arguments
from cryptoface.errors import DataError
from cryptoface.params import DEFAULT_PROTOCOL, PROTOCOLS, RINGS


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench-match",
        help="benchmark encrypted matching: encrypted vs clear scores on LFW pairs, 1:1 and 1:N times, store bytes, "
             "server RSS",
    )
    p.add_argument("--backend", choices=("openfhe", "desilofhe", "simulator"), default="openfhe")
    p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                   help="refresh (default): the templates are the client's fresh normalised ones, the server only "
                        "scores; one-round: raw engine templates, the server normalises them under encryption")
    p.add_argument("--ring", choices=RINGS, default="match",
                   help="refresh protocol: where templates are stored and matched: match (default: the client's "
                        "matching ring, N = 2^13) or network (the network's ring, N = 2^16)")
    p.add_argument("--lfw-dir", type=Path, default=None,
                   help="LFW folder with pairs.txt (default: synthetic embeddings, for smoke tests)")
    p.add_argument("--pairs", type=int, default=200,
                   help="pairs for encrypted vs clear scores, half genuine, half impostor, spread over the folds")
    p.add_argument("--gallery", default="1000,10000", help="comma-separated 1:N gallery sizes ('' for none)")
    p.add_argument("--runs", type=int, default=3, help="repetitions of each 1:N scoring (median reported)")
    p.add_argument("--model", type=Path, default=None, help="fused model file (default: the bundled model)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    p.add_argument("--threads", type=int, default=1, help="the backend's own threads")
    add_device_arguments(p)
    p.add_argument("--cache-dir", type=Path, default=None, help="LFW crop/embedding cache (as in `eval lfw`)")
    p.add_argument("--log-ring", type=int, default=None,
                   help="simulator only: smaller ring for quick tests (default: the real N = 2^16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where keys and ciphertexts are exchanged (default: a temporary folder, removed)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (rewritten as pairs finish)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _gallery_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError as exc:
        raise DataError(f"--gallery takes comma-separated sizes, got {text!r}") from exc


def run(args: argparse.Namespace) -> int:
    from cryptoface.bench import MatchOptions, run_match_bench, write_json

    options = MatchOptions(
        backend=args.backend, protocol=args.protocol, ring=args.ring, lfw_dir=args.lfw_dir, pairs=args.pairs,
        gallery_sizes=_gallery_sizes(args.gallery),
        runs=args.runs, model=args.model, threshold=args.threshold, threads=args.threads, device=args.device,
        cache_dir=args.cache_dir,
        log_ring=args.log_ring, seed=args.seed, workdir=args.workdir, progress=not args.quiet,
        command="cryptoface " + " ".join(sys.argv[1:]) if sys.argv and "cryptoface" in sys.argv[0] else None,
    )
    report = run_match_bench(options, on_update=(lambda r: write_json(args.json, r)) if args.json else None)
    print(json.dumps(report.summary(), indent=2, default=float))
    return 0
