"""Verification metrics on synthetic scores whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.eval import metrics

# Genuine 0.1, 0.6, 0.7, 0.8, 0.9; impostor 0.2, 0.3, 0.4, 0.5, 0.65.
# Accepting score > 0.55: TAR 4/5 (0.1 rejected), FAR 1/5 (0.65 accepted) -> FRR = FAR = 0.2 exactly.
GEN = [0.1, 0.6, 0.7, 0.8, 0.9]
IMP = [0.2, 0.3, 0.4, 0.5, 0.65]
SCORES = np.array(GEN + IMP)
LABELS = np.array([1] * 5 + [0] * 5)


def test_roc_endpoints_and_monotone():
    roc = metrics.roc_curve(SCORES, LABELS)
    assert (roc.fpr[0], roc.tpr[0]) == (0.0, 0.0)
    assert (roc.fpr[-1], roc.tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
    assert np.all(np.diff(roc.thresholds) < 0)
    for f, t, thr in zip(roc.fpr, roc.tpr, roc.thresholds, strict=True):
        assert f == np.mean(np.array(IMP) > thr) and t == np.mean(np.array(GEN) > thr)


def test_eer_exact():
    e, thr = metrics.eer(SCORES, LABELS)
    assert e == pytest.approx(0.2, abs=1e-12)
    assert 0.5 < thr < 0.6


def test_eer_interpolated():
    # Genuine 0.9, 0.8; impostor 0.85, 0.1. ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1).
    # FRR - FAR goes 1, .5, 0 -> EER 0.5 at a point; shift to get a crossing between points:
    scores = np.array([0.9, 0.8, 0.7, 0.85, 0.1, 0.05])
    labels = np.array([1, 1, 1, 0, 0, 0])
    # Points: (0,0) (0,1/3) (1/3,1/3) (1/3,2/3) (1/3,1) ...; FRR-FAR: 1, 2/3, 1/3, 0 -> EER = 1/3.
    e, _ = metrics.eer(scores, labels)
    assert e == pytest.approx(1 / 3, abs=1e-12)
    # A true crossing between ROC points: FRR-FAR = +0.5 then -0.5 -> midpoint.
    scores = np.array([0.9, 0.5, 0.8, 0.1])
    labels = np.array([1, 1, 0, 0])
    e, _ = metrics.eer(scores, labels)
    assert e == pytest.approx(0.5, abs=1e-12)


def test_separable_is_perfect():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.uniform(0.6, 1.0, 50), rng.uniform(-1.0, 0.4, 70)]
    labels = np.r_[np.ones(50), np.zeros(70)]
    assert metrics.eer(scores, labels)[0] == 0.0
    thr, acc = metrics.best_threshold(scores, labels)
    assert acc == 1.0 and scores[50:].max() < thr < scores[:50].min()
    assert metrics.tar_at_far(scores, labels, 1e-3) == 1.0


def test_tar_at_far():
    assert metrics.tar_at_far(SCORES, LABELS, 0.0) == pytest.approx(0.6)  # 0.7, 0.8, 0.9 above 0.65
    assert metrics.tar_at_far(SCORES, LABELS, 0.2) == pytest.approx(0.8)
    assert metrics.tar_at_far(SCORES, LABELS, 0.19) == pytest.approx(0.6)
    assert metrics.tar_at_far(SCORES, LABELS, 1.0) == 1.0


def test_accuracy_uses_strict_greater():
    assert metrics.accuracy([0.5, 0.5], [1, 0], 0.5) == 0.5  # 0.5 is not > 0.5: both "different"
    assert metrics.accuracy(SCORES, LABELS, 0.55) == pytest.approx(0.8)


def test_best_threshold_known():
    thr, acc = metrics.best_threshold(SCORES, LABELS)
    assert acc == pytest.approx(0.8)
    assert thr == pytest.approx(0.55)  # lowest of the tied best midpoints (0.55 and 0.675)
    assert metrics.accuracy(SCORES, LABELS, thr) == acc


def test_best_threshold_ties_and_extremes():
    # All genuine: everything accepted; all impostor: nothing accepted.
    thr, acc = metrics.best_threshold([0.3, 0.3, 0.7], [1, 1, 1])
    assert acc == 1.0 and thr < 0.3
    thr, acc = metrics.best_threshold([0.3, 0.7], [0, 0])
    assert acc == 1.0 and thr >= 0.7
    # Equal scores cannot be split.
    thr, acc = metrics.best_threshold([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])
    assert acc == 0.5


def test_kfold_protocol_known_answer():
    # 10 folds of 4 pairs: genuine 0.9, 0.8, impostor 0.2, 0.1 everywhere except fold 3, whose impostor
    # scores 0.95. The threshold learnt on the other folds lies in (0.2, 0.8): fold 3 gets 3/4 right.
    scores, labels, folds = [], [], []
    for k in range(10):
        scores += [0.9, 0.8, 0.95 if k == 3 else 0.2, 0.1]
        labels += [1, 1, 0, 0]
        folds += [k] * 4
    res = metrics.kfold_accuracy(np.array(scores), np.array(labels), np.array(folds))
    expected = [1.0] * 10
    expected[3] = 0.75
    assert res.fold_accuracies == pytest.approx(expected)
    assert res.accuracy == pytest.approx(0.975)
    assert res.accuracy_std == pytest.approx(np.std(expected))  # ddof=0
    assert all(0.2 < t < 0.8 for t in res.thresholds)


def test_lfw_folds():
    f = metrics.lfw_folds(6000)
    assert f[0] == 0 and f[599] == 0 and f[600] == 1 and f[5999] == 9
    with pytest.raises(ValueError):
        metrics.lfw_folds(6001)


def test_input_validation():
    with pytest.raises(ValueError):
        metrics.roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        metrics.accuracy([0.1, np.nan], [1, 0], 0.0)
    with pytest.raises(ValueError):
        metrics.accuracy([0.1, 0.2], [1, 2], 0.0)
