"""``cryptoface model``: import the paper checkpoint into a fused model file, and inspect model files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.errors import CryptoFaceError
from cryptoface.model import reference
from cryptoface.model.file import load_model, model_tensors, read_header, save_model
from cryptoface.model.fused import FusedModel


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("model", help="import and inspect fused model files")
    sub = parser.add_subparsers(dest="model_command", required=True)

    imp = sub.add_parser("import-paper", help="fuse the CryptoFace authors' released checkpoint into a model file")
    imp.add_argument("checkpoint", type=Path, help="PyTorch checkpoint (e.g. cryptofacenet4-64x64-paper.ckpt)")
    imp.add_argument("--out", type=Path, required=True, help="model file to write (.npz)")
    imp.add_argument("--resolution", type=int, default=64, choices=(64, 96, 128))
    imp.add_argument("--a2-floor", type=float, default=None, help="floor on |a2| (default: train.fuse's)")
    imp.set_defaults(func=_import_paper)

    cal = sub.add_parser(
        "calibrate",
        help="set a model file's decision threshold for a false-accept rate on the in-the-wild validation",
    )
    cal.add_argument("file", type=Path, help="fused model file (.npz)")
    cal.add_argument("--train-dir", type=Path, required=True, help="the faces-train folder (tar shards + index.csv)")
    # no choices here: the rates live in cryptoface.match, whose import is not worth every command's start-up
    cal.add_argument("--far", type=float, default=None,
                     help="false-accept rate, one of those `eval wild` reports (default: the shipped threshold's)")
    cal.add_argument("--out", type=Path, default=None, help="model file to write (default: FILE itself)")
    cal.add_argument("--quiet", action="store_true", help="no progress bars")
    cal.set_defaults(func=_calibrate)

    info = sub.add_parser("info", help="summarise a model file: header, parameter count, coefficient ranges")
    info.add_argument("file", type=Path)
    info.set_defaults(func=_info)


def _calibrate(args: argparse.Namespace) -> int:
    from cryptoface.errors import DataError
    from cryptoface.eval.embedders import FusedEmbedder
    from cryptoface.eval.wild import calibration, evaluate_wild
    from cryptoface.match.threshold import DEFAULT_FAR, FARS, METADATA_KEY

    far = DEFAULT_FAR if args.far is None else args.far
    if far not in FARS:  # before minutes of embedding
        raise DataError(f"--far must be one of {', '.join(f'{f:g}' for f in FARS)}, got {far:g}")
    model = load_model(args.file)
    result = evaluate_wild(args.train_dir, FusedEmbedder(args.file), progress=not args.quiet)
    detail = calibration(result, far)
    old = model.metadata.get(METADATA_KEY)
    model.metadata[METADATA_KEY] = detail["threshold"]
    model.metadata["threshold_detail"] = detail
    out = save_model(model, args.out or args.file)
    lo, hi = detail["tar_ci95"]
    print(f"threshold {detail['threshold']:.4f} for FAR {far:g}: TAR {100 * detail['tar']:.2f} % "
          f"[{100 * lo:.2f}, {100 * hi:.2f}] on {detail['identities']} held-out identities; wrote {out}")
    if old is not None:
        scores, same = result["scores"], result["labels"]
        print(f"the previous threshold {old:.4f} gave FAR {100 * np.mean(scores[~same] > old):.2f} % and TAR "
              f"{100 * np.mean(scores[same] > old):.2f} % on the same pairs")
    return 0


def deterministic_inputs(resolution: int, n: int = 3) -> np.ndarray:
    """``n`` smooth, reproducible inputs in [-1, 1] of shape (n, 3, S, S) for cross-checks."""
    yy, xx = np.meshgrid(np.linspace(-1.0, 1.0, resolution), np.linspace(-1.0, 1.0, resolution), indexing="ij")
    out = []
    for k in range(n):
        out.append(
            np.stack(
                [
                    np.sin((3 + k) * xx + yy + 0.7 * k),
                    np.cos((2 + k) * yy - xx),
                    np.tanh(2 * xx * yy - 0.3 * k),
                ]
            )
            * 0.9
        )
    return np.stack(out)


def compare_with_torch(fused: FusedModel, torch_model: Any, x: np.ndarray) -> dict[str, float]:
    """Max abs / rel error of the numpy reference against the torch model in float64 and float32."""
    import copy

    import torch

    ref = reference.forward(fused, x)
    res: dict[str, float] = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        m = copy.deepcopy(torch_model).to(dtype).eval()
        with torch.no_grad():
            t = m(torch.from_numpy(x).to(dtype)).to(torch.float64).numpy()
        err = float(np.max(np.abs(ref - t)))
        res[f"{name}_max_abs"] = err
        res[f"{name}_max_rel"] = err / float(np.max(np.abs(t)))
    return res


def _import_paper(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise CryptoFaceError(
            "importing a PyTorch checkpoint needs torch; install it with: pip install '.[train]'"
        ) from exc
    from cryptoface.train.fuse import DEFAULT_A2_FLOOR
    from cryptoface.train.paper import import_paper, load_paper_checkpoint

    floor = DEFAULT_A2_FLOOR if args.a2_floor is None else args.a2_floor
    fused = import_paper(args.checkpoint, resolution=args.resolution, a2_floor=floor)
    torch_model = load_paper_checkpoint(args.checkpoint, args.resolution)
    errs = compare_with_torch(fused, torch_model, deterministic_inputs(args.resolution))
    fused.metadata["import_check"] = {"inputs": "model_cmd.deterministic_inputs(resolution, 3)", **errs}
    path = save_model(fused, args.out)
    fz = fused.metadata["fusion"]
    print(
        f"wrote {path} ({path.stat().st_size:,} bytes): {fused.architecture}, {fused.metadata['parameters']:,} params"
    )
    print(f"source sha256 {fused.metadata['source']['sha256']}")
    print(
        f"a2 floor {fz['a2_floor']:g}: {fz['floored_channels']} channel(s) floored; min |a2| = {fz['min_abs_a2']:.3g}"
    )
    print("numpy reference vs torch (3 deterministic inputs):")
    for name in ("float64", "float32"):
        print(f"  {name}: max abs {errs[name + '_max_abs']:.3g}, max rel {errs[name + '_max_rel']:.3g}")
    return 0


def quadratic_ranges(model: FusedModel) -> dict[str, tuple[float, float]]:
    """Per layer (over all patches): (max |b|, max |c|) of its monic quadratics."""
    out: dict[str, tuple[float, float]] = {}

    def add(name: str, q: Any) -> None:
        b0, c0 = out.get(name, (0.0, 0.0))
        out[name] = (max(b0, float(np.max(np.abs(q.b)))), max(c0, float(np.max(np.abs(q.c)))))

    for net in model.patches:
        for i, blk in enumerate(net.blocks):
            add(f"block{i}.q1", blk.q1)
            add(f"block{i}.q2", blk.q2)
        add("pool.q", net.pool_q)
    return out


def _info(args: argparse.Namespace) -> int:
    header = read_header(args.file)
    model = load_model(args.file)
    meta = model.metadata
    n_values = sum(int(a.size) for a in model_tensors(model).values())
    print(f"{args.file}: {header['format']} v{header['version']}")
    print(
        f"  architecture {model.architecture}, input {model.resolution}x{model.resolution}, "
        f"{model.n_patches} patches of {model.patch_size}x{model.patch_size}"
    )
    src = meta.get("source", {})
    if src:
        print(f"  source: {src.get('description', '?')}")
        if "file" in src:
            print(f"          {src['file']} sha256 {src.get('sha256', '?')}")
    if "parameters" in meta:
        print(f"  parameters (nets + fusion linear, before fusion): {meta['parameters']:,}")
    print(f"  fused values stored: {n_values:,}")
    print("  monic quadratics q(x) = x^2 + b x + c (max over patches):")
    for name, (mb, mc) in quadratic_ranges(model).items():
        print(f"    {name:10s} max|b| {mb:10.4g}  max|c| {mc:10.4g}")
    fz = meta.get("fusion", {})
    if "min_abs_a2" in fz:
        print(f"  min |a2| {fz['min_abs_a2']:.3g}; a2 floor {fz.get('a2_floor')}: {fz.get('floored_channels')} floored")
    chk = meta.get("import_check")
    if chk:
        print(
            f"  import check: vs torch float64 max rel {chk['float64_max_rel']:.3g}, "
            f"vs float32 max rel {chk['float32_max_rel']:.3g}"
        )
    return 0
