"""``cryptoface eval lfw|pairs``: verification accuracy of a fused model or of the SFace reference."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cryptoface.eval.pairs import DEFAULT_NO_FACE_POLICY, NO_FACE_POLICIES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="measure verification accuracy (LFW or your own pairs)")
    sub = parser.add_subparsers(dest="eval_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            default=None,
            help="fused model file (.npz) or 'sface' for OpenCV's SFace; default: the bundled model",
        )
        p.add_argument(
            "--resolution",
            type=int,
            default=None,
            help="model input size; read from the model file, only checked if given",
        )
        p.add_argument("--json", type=Path, default=None, help="write the result as JSON (rates as fractions)")
        p.add_argument("--plot", type=Path, default=None, help="write the ROC curve as PNG")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    lfw = sub.add_parser("lfw", help="10-fold LFW protocol on pairs.txt (6,000 pairs)")
    lfw.add_argument("--lfw-dir", type=Path, required=True, help="folder with pairs.txt and <Name>/<Name>_NNNN.jpg")
    common(lfw)
    lfw.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where aligned crops are cached (default $CRYPTOFACE_CACHE or ~/.cache/cryptoface)",
    )
    lfw.add_argument(
        "--limit",
        type=int,
        default=None,
        help="smoke test: keep the first N genuine and first N impostor pairs of each fold",
    )
    lfw.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="MODEL",
        help="also score this model (fused file or 'sface') on the same crops and pairs, as a row of one table "
        "(repeatable); the JSON lists them under 'compared', the plot draws every ROC",
    )
    lfw.add_argument(
        "--select",
        choices=("center", "largest"),
        default="center",
        help="face kept when a photo shows several: nearest the centre (LFW protocol, default) or largest",
    )
    lfw.set_defaults(func=run_lfw)

    wild = sub.add_parser(
        "wild",
        help="in-the-wild validation: pairs of the CelebA identities of faces-train that training leaves out",
    )
    wild.add_argument("--train-dir", type=Path, required=True, help="the faces-train folder (tar shards + index.csv)")
    common(wild)
    wild.add_argument("--compare", action="append", default=[], metavar="MODEL",
                      help="also score this model on the same pairs, as a row of one table (repeatable)")
    wild.set_defaults(func=run_wild)

    pairs = sub.add_parser("pairs", help="your own pairs: CSV with columns image1,image2,same")
    pairs.add_argument("--csv", type=Path, required=True, help="CSV; image paths are relative to it")
    common(pairs)
    pairs.add_argument("--threshold", type=float, default=None, help="also report accuracy at this cosine threshold")
    pairs.add_argument(
        "--no-face",
        choices=NO_FACE_POLICIES,
        default=DEFAULT_NO_FACE_POLICY,
        help="photo without a detected face: 'skip' counts it as a failure to acquire and leaves its pairs "
        "unscored (default), 'centre-crop' scores it on a centre crop and flags its pairs, 'error' aborts",
    )
    pairs.set_defaults(func=run_pairs)


def _finish(args: argparse.Namespace, result: dict, model_name: str, resolution: int, title: str,
            compared: Sequence[tuple[dict, str, int]] = (), **extra) -> int:
    """Print, and write as asked, the report of ``result`` and of the ``compared`` (result, model, resolution)."""
    from cryptoface.eval.plot import plot_roc
    from cryptoface.eval.report import build_report, format_summary, format_table, write_json

    report = build_report(result, model_name, resolution, **extra)
    print(format_summary(report))
    if compared:
        others = [build_report(r, name, res, **extra) for r, name, res in compared]
        report["compared"] = others
        print(format_table([report, *others]))
    if args.json is not None:
        print(f"wrote {write_json(report, args.json)}")
    if args.plot is not None:
        path = plot_roc(
            result["scores"],
            result["labels"],
            args.plot,
            title,
            report["eer"],
            report["accuracy"],
            report["accuracy_std"],
            others=[(name, r["scores"], r["labels"], r["eer"]) for r, name, _ in compared],
        )
        print(f"wrote {path}")
    return 0


def run_lfw(args: argparse.Namespace) -> int:
    from cryptoface.errors import DataError
    from cryptoface.eval.embedders import embedder_for
    from cryptoface.eval.lfw import evaluate_lfw

    if args.limit is not None and args.limit < 1:
        raise DataError("--limit must be at least 1")
    embedders = [embedder_for(args.model, args.resolution)] + [embedder_for(m) for m in args.compare]  # checked first
    results = [
        evaluate_lfw(args.lfw_dir, emb, limit=args.limit, cache_dir=args.cache_dir, progress=not args.quiet,
                     select=args.select)
        for emb, _ in embedders
    ]
    (emb, model_name), result = embedders[0], results[0]
    title = f"LFW, {emb.name} ({result['n_pairs']} pairs, 10-fold)"
    compared = [(r, name, e.resolution) for (e, name), r in zip(embedders[1:], results[1:], strict=True)]
    return _finish(args, result, model_name, emb.resolution, title, compared, dataset="lfw", protocol="10-fold",
                   lfw_dir=str(args.lfw_dir))


def run_wild(args: argparse.Namespace) -> int:
    from cryptoface.eval.embedders import embedder_for
    from cryptoface.eval.report import format_differences, format_thresholds
    from cryptoface.eval.wild import evaluate_wild, load_wild, paired_difference

    embedders = [embedder_for(args.model, args.resolution)] + [embedder_for(m) for m in args.compare]  # checked first
    wild = load_wild(args.train_dir, progress=not args.quiet)
    results = [evaluate_wild(args.train_dir, emb, progress=not args.quiet, wild=wild) for emb, _ in embedders]
    (emb, model_name), result = embedders[0], results[0]
    title = f"in the wild, {emb.name} ({result['n_genuine']} genuine, {result['n_impostor']} impostor pairs)"
    compared = [(r, name, e.resolution) for (e, name), r in zip(embedders[1:], results[1:], strict=True)]
    for r, _, _ in compared:  # same pairs, same seed: the bootstrap draws are shared, the difference is paired
        r["difference_of_model"] = paired_difference(result, r)
    code = _finish(args, result, model_name, emb.resolution, title, compared, dataset="wild",
                   protocol="all pairs of held-out identities; accuracy = 1 - EER; identity-bootstrap 95 % intervals",
                   train_dir=str(args.train_dir))
    print(format_thresholds([(model_name, result)] + [(name, r) for r, name, _ in compared]))
    if compared:
        print(format_differences(model_name, [(name, r["difference_of_model"]) for r, name, _ in compared]))
    return code


def run_pairs(args: argparse.Namespace) -> int:
    from cryptoface.eval.embedders import embedder_for
    from cryptoface.eval.pairs import evaluate_pairs

    emb, model_name = embedder_for(args.model, args.resolution)
    result = evaluate_pairs(args.csv, emb, threshold=args.threshold, no_face=args.no_face)
    title = f"{args.csv.name}, {emb.name} ({result['n_pairs']} pairs)"
    return _finish(
        args,
        result,
        model_name,
        emb.resolution,
        title,
        dataset=str(args.csv),
        protocol="accuracy at the pooled EER threshold",
    )
