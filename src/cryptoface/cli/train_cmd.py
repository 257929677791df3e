"""``cryptoface train`` (needs the ``train`` extra: torch) and ``cryptoface ranges`` (numpy only).

``cryptoface train --config configs/distill-paper.json [--resume] [--set key=value ...] [--teacher-only]
[--make-pack FILE]``
``cryptoface ranges MODEL --lfw-dir ../shared/data/lfw [--train-dir ../shared/data/faces-train] [--limit N]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryptoface.errors import CryptoFaceError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="fine-tune / train CryptoFaceNet by distillation (needs torch)")
    p.add_argument("--config", type=Path, required=True, help="JSON training config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoint.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument(
        "--teacher-only",
        action="store_true",
        help="only fill the teacher-embedding cache (resumable), then exit",
    )
    p.add_argument(
        "--make-pack",
        type=Path,
        default=None,
        metavar="FILE",
        help="write a self-contained training pack (crops, teacher features, guard applied) for `pack = FILE`",
    )
    p.set_defaults(func=run_train)

    r = subparsers.add_parser(
        "ranges", help="per-layer max and 99.9th percentile of |HerPN input| of a fused model on real faces"
    )
    r.add_argument("model", type=Path, help="fused model file (.npz)")
    r.add_argument("--lfw-dir", type=Path, default=None, help="LFW folder (pairs.txt photos, aligned via the cache)")
    r.add_argument("--train-dir", type=Path, default=None, help="faces-train folder (tar shards + index.csv)")
    r.add_argument("--limit", type=int, default=None, help="use at most N images from each source")
    r.add_argument("--train-limit", type=int, default=None, help="at most N training crops (overrides --limit)")
    r.add_argument("--bound", type=float, default=None, help="exit with status 1 when any |HerPN input| exceeds it")
    r.add_argument("--json", type=Path, default=None, help="write the per-layer table as JSON")
    r.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default ~/.cache/cryptoface)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument(
        "--lfw-metrics",
        action="store_true",
        help="also score LFW pairs.txt (10-fold) from the same forward pass (needs all pair photos: no --limit)",
    )
    r.add_argument(
        "--claim",
        action="store_true",
        help="when every input of the full sources (no --limit) is within --bound and finite, write the bound, "
        "this table and what it was measured on (and LFW with --lfw-metrics) into the model file's metadata, "
        "where the model card's figures and tests/test_train_ranges.py's re-check come from",
    )
    r.set_defaults(func=run_ranges)


def run_train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise CryptoFaceError("cryptoface train needs PyTorch: pip install 'cryptoface[train]'") from exc
    from cryptoface.train.config import load_config

    cfg = load_config(args.config, args.set)
    if args.teacher_only:
        from cryptoface.train.data import load_crops, read_index
        from cryptoface.train.distill import fill_teacher_cache

        index = read_index(cfg.train_dir)
        crops = load_crops(index, cfg.cache_dir, cfg.progress)
        folder = fill_teacher_cache(crops, index.digest, cfg.teacher, cfg.teacher_views, cfg.cache_dir, cfg.progress)
        print(f"teacher cache complete: {folder}")
        return 0
    if args.make_pack:
        from cryptoface.train.train import make_pack

        make_pack(cfg, args.make_pack)
        return 0
    from cryptoface.train.train import train

    summary = train(cfg, resume=args.resume)
    print(json.dumps({k: summary[k] for k in ("export", "minutes", "stopped_early")}))
    return 0


def _batches(crops, resolution: int, batch: int = 32):
    import numpy as np

    from cryptoface.face.resize import to_model_input

    for i in range(0, len(crops), batch):
        yield np.stack([to_model_input(np.asarray(c), resolution) for c in crops[i : i + batch]])


def run_ranges(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from cryptoface.model.file import load_model
    from cryptoface.train.ranges import RangeStats, fused_forward_ranges

    if args.lfw_dir is None and args.train_dir is None:
        raise CryptoFaceError("give --lfw-dir and/or --train-dir")
    if args.claim and args.bound is None:
        raise CryptoFaceError("--claim writes the bound it checked: give --bound")
    if args.claim and (args.limit is not None or args.train_limit is not None):
        raise CryptoFaceError("--claim covers every image of the given sources: drop --limit / --train-limit")
    model = load_model(args.model)
    stats = RangeStats()
    sources: list[tuple[str, object]] = []
    if args.lfw_dir is not None:
        from cryptoface.eval.lfw import aligned_crops, read_pairs

        pairs = read_pairs(args.lfw_dir / "pairs.txt")
        names = sorted(set(pairs.left) | set(pairs.right))[: args.limit]
        crops, _ = aligned_crops(args.lfw_dir, names, args.cache_dir, not args.quiet)
        sources.append((f"LFW pair photos ({len(names)})", [crops[n] for n in names]))
    if args.train_dir is not None:
        from cryptoface.train.data import load_crops, read_index

        index = read_index(args.train_dir)
        arr = load_crops(index, args.cache_dir, not args.quiet)
        limit = args.train_limit if args.train_limit is not None else args.limit
        n = len(arr) if limit is None else min(limit, len(arr))
        # evenly spaced over the index so every source (celeba, utkface, aaf) is represented
        rows = np.unique(np.linspace(0, len(arr) - 1, n).round().astype(int))
        sources.append((f"training crops ({len(rows)})", arr[rows]))
    embeddings: list[np.ndarray] = []
    for k, (label, crops) in enumerate(sources):
        for batch in tqdm(list(_batches(crops, model.resolution)), desc=label, disable=args.quiet):
            out = fused_forward_ranges(model, batch, stats)
            if k == 0 and args.lfw_dir is not None:
                embeddings.append(out)
    lfw_result = None
    if args.lfw_metrics and args.lfw_dir is not None:
        from cryptoface.eval.embedders import cosine_scores
        from cryptoface.eval.lfw import summarize

        if args.limit is not None:
            raise CryptoFaceError("--lfw-metrics needs every pair photo: drop --limit")
        feats = dict(zip(names, np.concatenate(embeddings), strict=True))
        scores = cosine_scores(np.stack([feats[n] for n in pairs.left]), np.stack([feats[n] for n in pairs.right]))
        res = summarize(scores, pairs.same, pairs.fold)
        lfw_result = {k: v for k, v in res.items() if k in ("accuracy", "accuracy_std", "eer", "tar_at_far_1e-2")}
        lfw_result["tar_at_far_1e-3"] = res["tar_at_far_1e-3"]
        print(
            "LFW 10-fold: accuracy {:.2f} % +- {:.2f}, EER {:.2f} %, TAR@FAR=1e-3 {:.2f} %".format(
                100 * res["accuracy"], 100 * res["accuracy_std"], 100 * res["eer"], 100 * res["tar_at_far_1e-3"]
            )
        )
    rows = stats.table()
    print(f"{args.model}: {stats.n_images} images ({'; '.join(lbl for lbl, _ in sources)})")
    print(f"{'HerPN input':28s} {'max |x|':>10s} {'p99.9 |x|':>10s}")
    for r in rows:
        print(f"{r['layer']:28s} {r['max']:10.2f} {r['p99.9']:10.2f}")
    overall = stats.overall_max
    print(f"overall max |HerPN input| = {overall:.2f}")
    print(f"non-finite HerPN outputs: {stats.nonfinite_herpn}, non-finite embeddings: {stats.nonfinite_embedding}")
    bound = model.metadata.get("activation_bound")
    if bound is not None:
        print(f"model claims activation_bound = {bound}: {'OK' if overall <= bound else 'VIOLATED'}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "model": str(args.model),
                    "images": stats.n_images,
                    "sources": [lbl for lbl, _ in sources],
                    "layers": rows,
                    "overall_max": overall,
                    "nonfinite_herpn": stats.nonfinite_herpn,
                    "nonfinite_embedding": stats.nonfinite_embedding,
                    "lfw": lfw_result,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")
    bad = stats.nonfinite_herpn or stats.nonfinite_embedding
    if args.bound is not None and overall > args.bound:
        print(f"bound {args.bound} exceeded")
        bad = True
    if args.claim and not bad:
        _claim_bound(args, model, stats, [lbl for lbl, _ in sources], lfw_result)
    return 1 if bad else 0


def _claim_bound(args: argparse.Namespace, model, stats, sources: list[str], lfw: dict | None) -> None:
    """Write the checked ``activation_bound`` and what it was measured on into the model file (atomically)."""
    from cryptoface.model.file import save_model

    model.metadata["activation_bound"] = float(args.bound)
    model.metadata["activation_ranges"] = {
        "command": "cryptoface ranges MODEL " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("lfw_dir", args.lfw_dir), ("train_dir", args.train_dir),
                                                       ("bound", args.bound)) if v is not None)
        + (" --lfw-metrics" if args.lfw_metrics else "") + " --claim",
        "images": stats.n_images,
        "sources": sources,
        "measured_max": stats.overall_max,
        "per_layer": {r["layer"]: {"max": r["max"], "p99.9": r["p99.9"]} for r in stats.table()},
    }
    if lfw is not None:
        model.metadata["lfw"] = lfw
    print(f"claimed activation_bound = {args.bound} in {save_model(model, args.model)}")
