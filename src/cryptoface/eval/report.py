"""JSON result and human summary of an evaluation.

The JSON always has the keys ``accuracy``, ``accuracy_std``, ``eer``, ``tar_at_far_1e-2``,
``tar_at_far_1e-3``, ``n_pairs``, ``model`` and ``resolution``, plus extras such as ``fold_accuracies``,
``thresholds`` and ``seconds``. Every accuracy and rate is a FRACTION in [0, 1] (0.9925 means 99.25 %);
only the printed summary uses percent.

``eval pairs`` adds ``n_pairs_total``, ``no_face_policy``, ``failure_to_acquire`` (ISO/IEC 19795-1 FTA:
photos, photo_rate, pairs_unscored, examples ...) and, under the centre-crop policy, ``centre_crop``
(the flagged pairs); ``n_pairs`` and the metrics then cover the scored pairs only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_KEYS = (
    "accuracy",
    "accuracy_std",
    "eer",
    "tar_at_far_1e-2",
    "tar_at_far_1e-3",
    "n_pairs",
    "model",
    "resolution",
)
# Large arrays kept in memory for plotting, never written to the JSON.
_NOT_SERIALISED = ("scores", "labels", "bootstrap_tar")


def _plain(value: Any) -> Any:
    """JSON-ready copy of ``value``: dataclasses and numpy values as plain Python, non-finite floats as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_report(result: dict[str, Any], model: str, resolution: int, **extra: Any) -> dict[str, Any]:
    """JSON-ready report: the required keys first, then the extras."""
    report = {k: v for k, v in result.items() if k not in _NOT_SERIALISED}
    report.update(model=model, resolution=int(resolution), **extra)
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ValueError(f"evaluation result lacks {missing}")
    ordered = {k: report[k] for k in REQUIRED_KEYS}
    ordered.update({k: v for k, v in report.items() if k not in ordered})
    return _plain(ordered)


def write_json(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _acquisition_lines(report: dict[str, Any]) -> list[str]:
    """Failure-to-acquire and centre-crop lines of an ``eval pairs`` report (none for other reports)."""
    lines = []
    fta = report.get("failure_to_acquire")
    if fta is not None:
        lines.append(
            f"  failure to acquire (FTA, no-face policy {fta['policy']}): {fta['photos']} of "
            f"{_plural(fta['photos_total'], 'photo')} ({_pct(fta['photo_rate'])}), {fta['pairs_unscored']} of "
            f"{_plural(fta['pairs_total'], 'pair')} unscored"
        )
        if fta["pairs_unscored"]:
            lines.append(f"    metrics over the {_plural(report['n_pairs'], 'scored pair')} only")
        lines += [f"    {e['error']}: {e['path']}" for e in fta["examples"]]
        if fta["photos"] > len(fta["examples"]):
            lines.append(f"    ... and {fta['photos'] - len(fta['examples'])} more")
    crop = report.get("centre_crop")
    if crop is not None:
        lines.append(
            f"  centre-crop fallback: {_plural(crop['photos'], 'photo')} without a detected face scored on a centre "
            f"crop, {_plural(crop['pairs'], 'pair')} flagged (listed in the JSON)"
        )
    return lines


def format_summary(report: dict[str, Any]) -> str:
    """A few human-readable lines, in percent."""
    acc = _pct(report["accuracy"])
    if report.get("accuracy_std") is not None:
        acc += f" ± {100 * report['accuracy_std']:.2f}"
    pairs = f"{report['n_pairs']} pairs"
    if report.get("n_pairs_total", report["n_pairs"]) != report["n_pairs"]:
        pairs = f"{report['n_pairs']} of {report['n_pairs_total']} pairs scored"
    lines = [
        f"model {report['model']} at {report['resolution']}x{report['resolution']}, {pairs}",
        f"  accuracy        {acc}",
        f"  EER             {_pct(report['eer'])}",
        f"  TAR @ FAR 1e-2  {_pct(report['tar_at_far_1e-2'])}",
        f"  TAR @ FAR 1e-3  {_pct(report['tar_at_far_1e-3'])}",
    ]
    if report.get("accuracy_at_threshold") is not None:
        lines.append(f"  accuracy at threshold {report['threshold']:g}: {_pct(report['accuracy_at_threshold'])}")
    if report.get("n_fallback"):
        lines.append(f"  {report['n_fallback']} photos had no detected face (centre crop used)")
    lines += _acquisition_lines(report)
    if report.get("seconds") is not None:
        lines.append(f"  {report['seconds']:.1f} s")
    return "\n".join(lines)


def format_table(reports: list[dict[str, Any]]) -> str:
    """One row per report (model, accuracy, EER, TAR@FAR), in percent: models scored in one run, side by side."""
    rows = [("model", "accuracy", "EER", "TAR@1e-2", "TAR@1e-3")]
    for r in reports:
        acc = _pct(r["accuracy"]) + ("" if r.get("accuracy_std") is None else f" ± {100 * r['accuracy_std']:.2f}")
        rows.append((str(r["model"]), acc, _pct(r["eer"]), _pct(r["tar_at_far_1e-2"]), _pct(r["tar_at_far_1e-3"])))
    return _columns(rows)


def format_thresholds(results: list[tuple[str, dict[str, Any]]]) -> str:
    """TAR and the cosine threshold at each FAR with their 95 % intervals (``eval wild``), one row per model."""
    from cryptoface.match.threshold import FARS, far_key

    rows = [("model", *(f"{w}@{far_key(f)} [95 % CI]" for f in FARS for w in ("TAR", "tau")))]
    for name, r in results:
        cells = [name]
        for far in map(far_key, FARS):
            lo, hi = r[f"tar_at_far_{far}_ci95"]
            cells.append(f"{100 * r[f'tar_at_far_{far}']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]")
            lo, hi = r[f"threshold_at_far_{far}_ci95"]
            cells.append(f"{r[f'threshold_at_far_{far}']:.4f} [{lo:.4f}, {hi:.4f}]")
        rows.append(tuple(cells))
    return _columns(rows)


def format_differences(name: str, others: list[tuple[str, dict[str, Any]]]) -> str:
    """``name``'s TAR minus each other model's at each FAR, with the paired 95 % interval (``eval wild``)."""
    from cryptoface.match.threshold import FARS, far_key

    rows = [(f"{name} minus", *(f"TAR@{far_key(f)} points [95 % CI, paired]" for f in FARS))]
    for other, d in others:
        cells = [other]
        for far in map(far_key, FARS):
            lo, hi = d[f"tar_at_far_{far}_ci95"]
            cells.append(f"{100 * d[f'tar_at_far_{far}']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]")
        rows.append(tuple(cells))
    return _columns(rows)


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
