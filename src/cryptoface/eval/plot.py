"""ROC plot (TAR against FAR on a log axis) written to PNG with matplotlib's Agg backend."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryptoface.eval.metrics import roc_curve


def plot_roc(
    scores: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike[str],
    title: str,
    eer: float,
    accuracy: float,
    accuracy_std: float | None = None,
    others: Sequence[tuple[str, np.ndarray, np.ndarray, float]] = (),
) -> Path:
    """Write the ROC of the pooled pairs; FAR axis from 1/#impostors to 1, EER and accuracy annotated.

    ``others`` are further (label, scores, labels, EER) curves drawn beside it, e.g. reference models."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    roc = roc_curve(scores, labels)
    n_neg = int(np.sum(np.asarray(labels) == 0))
    floor = 1.0 / max(n_neg, 1)
    # A log axis cannot show FAR = 0: start the curve at the smallest measurable FAR.
    far = np.maximum(roc.fpr, floor)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ax.step(far, roc.tpr, where="post", lw=1.8, color="tab:blue", label="ROC" if not others else "this model")
    lows = []
    colours = ("tab:green", "tab:orange", "tab:purple", "tab:gray")
    for i, (name, o_scores, o_labels, o_eer) in enumerate(others):
        o_roc = roc_curve(o_scores, o_labels)
        o_far = np.maximum(o_roc.fpr, floor)
        label = f"{Path(name).name} (EER {100 * o_eer:.2f} %)"
        ax.step(o_far, o_roc.tpr, where="post", lw=1.2, color=colours[i % len(colours)], label=label)
        lows.append(float(np.interp(floor * 1.0001, o_far, o_roc.tpr)))
    ax.plot([eer, eer], [0, 1 - eer], ls=":", color="tab:red", lw=1)
    ax.plot([eer], [1 - eer], "o", color="tab:red", label=f"EER {100 * eer:.2f} %")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    low = float(np.interp(floor * 1.0001, far, roc.tpr))
    bottom = min([low, 1 - eer, *lows])
    ax.set_ylim(max(0.0, bottom - max(0.01, 0.5 * (1 - bottom))), 1.002)
    ax.set_xlabel("FAR (false accept rate, log scale)")
    ax.set_ylabel("TAR (true accept rate)")
    acc = f"accuracy {100 * accuracy:.2f} %"
    if accuracy_std is not None:
        acc += f" ± {100 * accuracy_std:.2f}"
    ax.set_title(title)
    ax.text(
        0.98,
        0.04,
        acc,
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"},
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
