"""Verification metrics from pair scores, pure numpy.

Conventions: ``scores`` are similarities (higher = more likely the same person), ``labels`` are 1 for a
genuine (same-person) pair and 0 for an impostor pair. A pair is declared "same" iff ``score > threshold``.
Every rate and accuracy is a fraction in [0, 1]. FAR = false accept rate = FPR on impostor pairs;
TAR = true accept rate = TPR on genuine pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    if s.size == 0:
        raise ValueError("no pairs")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (different) or 1 (same)")
    return s, y.astype(bool)


@dataclass(frozen=True)
class Roc:
    """ROC points ordered by decreasing threshold; point k accepts the pairs with ``score > thresholds[k]``."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> Roc:
    """ROC over every distinct score, from (0, 0) (accept nothing) to (1, 1) (accept everything).

    Raises ValueError when there are no genuine or no impostor pairs (a rate would be undefined).
    """
    s, y = _check(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the ROC needs at least one genuine and one impostor pair")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Last index of each run of equal scores: accepting down to that score accepts the whole run.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(~y_sorted)[last]
    # Threshold of point k sits just below the k-th distinct score (midway to the next one).
    distinct = s_sorted[last]
    below = np.r_[distinct[1:], distinct[-1] - 1.0]
    thr = (distinct + below) / 2.0
    return Roc(
        fpr=np.r_[0.0, fp / n_neg],
        tpr=np.r_[0.0, tp / n_pos],
        thresholds=np.r_[distinct[0] + 1.0, thr],
    )


def eer(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold: where FAR = FRR (= 1 - TAR), linearly interpolated on the ROC.

    Returns ``(eer, threshold)``; the threshold is that of the ROC point nearest the crossing.
    """
    roc = roc_curve(scores, labels)
    fnr = 1.0 - roc.tpr
    diff = fnr - roc.fpr  # decreasing from 1 to -1 along the ROC
    k = int(np.nonzero(diff <= 0)[0][0])
    if diff[k] == 0 or k == 0:
        return float(roc.fpr[k]), float(roc.thresholds[k])
    # Crossing between points k-1 (diff > 0) and k (diff < 0): interpolate both rates linearly.
    t = diff[k - 1] / (diff[k - 1] - diff[k])
    fpr = roc.fpr[k - 1] + t * (roc.fpr[k] - roc.fpr[k - 1])
    fnr_x = fnr[k - 1] + t * (fnr[k] - fnr[k - 1])
    nearest = k - 1 if t < 0.5 else k
    return float((fpr + fnr_x) / 2.0), float(roc.thresholds[nearest])


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far: float) -> float:
    """Best TAR over the ROC points whose FAR is at most ``far`` (pooled over all pairs given)."""
    roc = roc_curve(scores, labels)
    ok = roc.fpr <= far + 1e-15
    return float(roc.tpr[ok].max())


def accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Fraction of pairs classified correctly when "same" means ``score > threshold``."""
    s, y = _check(scores, labels)
    return float(np.mean((s > threshold) == y))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy, and that accuracy.

    Candidates are the midpoints between consecutive distinct sorted scores plus one threshold below the
    lowest score (everything "same") and the highest score itself (nothing "same"). Ties go to the lowest
    threshold.
    """
    s, y = _check(scores, labels)
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    n = s.size
    # Candidate k (k = 0..n) rejects the k lowest scores: correct = impostors among them + genuines above.
    neg_below = np.r_[0, np.cumsum(~y_sorted)]
    pos_above = int(y.sum()) - np.r_[0, np.cumsum(y_sorted)]
    correct = neg_below + pos_above
    thresholds = np.empty(n + 1)
    thresholds[0] = np.nextafter(s_sorted[0], -np.inf)
    thresholds[1:n] = (s_sorted[:-1] + s_sorted[1:]) / 2.0
    thresholds[n] = s_sorted[-1]
    # A cut inside a run of equal scores cannot be realised by a threshold.
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s_sorted[:-1] != s_sorted[1:]
    correct = np.where(valid, correct, -1)
    k = int(np.argmax(correct))
    return float(thresholds[k]), float(correct[k] / n)


@dataclass(frozen=True)
class KFoldResult:
    """Per-fold accuracies (threshold chosen on the other folds), their mean and std (ddof=0)."""

    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    thresholds: list[float]


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> KFoldResult:
    """The LFW protocol: for each fold, pick the best threshold on all other folds, test on the fold.

    ``folds`` gives each pair's fold index (for LFW's pairs.txt, pair i is in fold i // 600).
    """
    s, y = _check(scores, labels)
    f = np.asarray(folds).ravel()
    if f.shape != s.shape:
        raise ValueError("folds must give one fold index per pair")
    ids = np.unique(f)
    if ids.size < 2:
        raise ValueError("k-fold evaluation needs at least two folds")
    accs, thrs = [], []
    for k in ids:
        test = f == k
        thr, _ = best_threshold(s[~test], y[~test])
        accs.append(accuracy(s[test], y[test], thr))
        thrs.append(thr)
    return KFoldResult(
        accuracy=float(np.mean(accs)),
        accuracy_std=float(np.std(accs, ddof=0)),
        fold_accuracies=[float(a) for a in accs],
        thresholds=[float(t) for t in thrs],
    )


def lfw_folds(n_pairs: int, n_folds: int = 10) -> np.ndarray:
    """Fold index of each pair when the pairs come as ``n_folds`` consecutive equal blocks (LFW: 600 each)."""
    if n_pairs % n_folds:
        raise ValueError(f"{n_pairs} pairs do not split into {n_folds} equal folds")
    return np.repeat(np.arange(n_folds), n_pairs // n_folds)
