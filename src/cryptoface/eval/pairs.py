"""Verification on a user CSV of pairs: columns ``image1,image2,same`` (paths relative to the CSV, same 1/0).

Photos without a usable face follow a :data:`NoFacePolicy` and are reported in ISO/IEC 19795-1 terms as
failure to acquire (FTA): see :func:`evaluate_pairs`.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from cryptoface.errors import CryptoFaceError, DataError, FaceTooSmallError, ImageError, NoFaceError
from cryptoface.eval import metrics
from cryptoface.eval.embedders import Embedder, cosine_scores
from cryptoface.face.fallback import centre_crop
from cryptoface.face.image import load_image_file
from cryptoface.face.pipeline import align_face

TRUE = {"1", "true", "yes", "same"}
FALSE = {"0", "false", "no", "different"}

# What to do with a photo in which no face is detected (NoFaceError, FaceTooSmallError):
#   skip         count it as a failure to acquire and leave its pairs unscored (default);
#   centre-crop  score it on a centre crop of the photo and flag its pairs;
#   error        abort the evaluation (DataError), as before policies existed.
NoFacePolicy = Literal["skip", "centre-crop", "error"]
NO_FACE_POLICIES: tuple[NoFacePolicy, ...] = get_args(NoFacePolicy)
DEFAULT_NO_FACE_POLICY: NoFacePolicy = "skip"
# Errors of the face pipeline that mean "no face to align"; ImageError (unreadable photo) is the other FTA cause.
NO_FACE_ERRORS: tuple[type[CryptoFaceError], ...] = (NoFaceError, FaceTooSmallError)
# How many failed photos the report names (all are counted).
MAX_EXAMPLES = 10


@dataclass(frozen=True)
class PhotoError:
    """A photo (path as written in the CSV) and the error class and message the face pipeline raised on it."""

    path: str
    error: str
    message: str


@dataclass(frozen=True)
class FailureToAcquire:
    """ISO/IEC 19795-1 failure to acquire: photos that gave no sample, and the pairs left unscored by them."""

    policy: NoFacePolicy
    photos: int
    photos_total: int
    photo_rate: float
    pairs_unscored: int
    pairs_total: int
    pairs_unscored_rate: float
    by_error: dict[str, int] = field(default_factory=dict)
    examples: list[PhotoError] = field(default_factory=list)


@dataclass(frozen=True)
class FlaggedPair:
    """A pair scored with at least one centre crop: its 0-based CSV row (index into ``pair_scores``) and photos."""

    index: int
    image1: str
    image2: str


@dataclass(frozen=True)
class CentreCropFallback:
    """Photos without a detected face that were scored on a centre crop, and every pair that used one."""

    photos: int
    pairs: int
    images: list[PhotoError] = field(default_factory=list)
    flagged_pairs: list[FlaggedPair] = field(default_factory=list)


@dataclass(frozen=True)
class Acquisition:
    """Outcome for one photo: its crop (None on failure), the error met, and whether the crop is a centre crop."""

    crop: np.ndarray | None
    error: CryptoFaceError | None = None
    centre_crop: bool = False


def read_pairs_csv(csv_path: str | os.PathLike[str]) -> tuple[list[Path], list[Path], np.ndarray]:
    """Parse the CSV; returns absolute image paths (left, right) and the genuine flags."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"pairs CSV not found: {path}")
    base = path.resolve().parent
    left, right, same = [], [], []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip() for f in reader.fieldnames or []}
        if not {"image1", "image2", "same"} <= fields:
            raise DataError(f"{path}: the header must name the columns image1,image2,same (got {sorted(fields)})")
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            flag = row["same"].lower()
            if flag not in TRUE | FALSE:
                raise DataError(f"{path}:{line}: 'same' must be 1 or 0, got {row['same']!r}")
            if not row["image1"] or not row["image2"]:
                raise DataError(f"{path}:{line}: image1 and image2 must both be given")
            left.append(base / row["image1"])
            right.append(base / row["image2"])
            same.append(flag in TRUE)
    if not same:
        raise DataError(f"{path}: no pairs")
    return left, right, np.array(same, dtype=bool)


def check_policy(policy: str) -> NoFacePolicy:
    """``policy`` as a :data:`NoFacePolicy`; raises DataError for any other value."""
    if policy not in NO_FACE_POLICIES:
        raise DataError(f"no-face policy must be one of {', '.join(NO_FACE_POLICIES)}; got {policy!r}")
    return policy  # type: ignore[return-value]


def acquire(path: Path, policy: NoFacePolicy) -> Acquisition:
    """Aligned crop of one photo under ``policy``; a failure is returned in the Acquisition, never raised."""
    try:
        img = load_image_file(path)
    except ImageError as exc:
        return Acquisition(None, exc)
    try:
        return Acquisition(align_face(img))
    except NO_FACE_ERRORS as exc:
        if policy == "centre-crop":
            return Acquisition(centre_crop(img), exc, centre_crop=True)
        return Acquisition(None, exc)
    except ImageError as exc:
        return Acquisition(None, exc)


def acquire_all(csv_path: str | os.PathLike[str], paths: list[Path], policy: NoFacePolicy) -> dict[Path, Acquisition]:
    """:func:`acquire` each photo; under the ``error`` policy the first failure raises DataError."""
    out: dict[Path, Acquisition] = {}
    for p in paths:
        out[p] = got = acquire(p, policy)
        if policy == "error" and got.error is not None:
            raise DataError(f"{csv_path}: {p}: {got.error}") from got.error
    return out


def _shown(path: Path, base: Path) -> str:
    """``path`` relative to the CSV's folder when it lies under it (as written in the CSV), else absolute."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _photo_error(path: Path, base: Path, exc: CryptoFaceError) -> PhotoError:
    return PhotoError(_shown(path, base), type(exc).__name__, str(exc))


def _failure_to_acquire(
    policy: NoFacePolicy, failed: list[tuple[Path, CryptoFaceError]], n_photos: int, unscored: int, n_pairs: int,
    base: Path,
) -> FailureToAcquire:
    """The FTA section of the report from the failed photos (in path order) and the pair counts."""
    by_error: dict[str, int] = {}
    for _, exc in failed:
        by_error[type(exc).__name__] = by_error.get(type(exc).__name__, 0) + 1
    return FailureToAcquire(
        policy=policy,
        photos=len(failed),
        photos_total=n_photos,
        photo_rate=len(failed) / n_photos,
        pairs_unscored=unscored,
        pairs_total=n_pairs,
        pairs_unscored_rate=unscored / n_pairs,
        by_error=by_error,
        examples=[_photo_error(p, base, exc) for p, exc in failed[:MAX_EXAMPLES]],
    )


def _centre_crop_fallback(
    acquired: dict[Path, Acquisition], left: list[Path], right: list[Path], base: Path
) -> CentreCropFallback:
    """The centre-crop section: photos scored on a centre crop and the pairs that use one of them."""
    cropped = [p for p, a in acquired.items() if a.centre_crop]
    flagged = [
        FlaggedPair(i, _shown(a, base), _shown(b, base))
        for i, (a, b) in enumerate(zip(left, right, strict=True))
        if acquired[a].centre_crop or acquired[b].centre_crop
    ]
    images = [_photo_error(p, base, acquired[p].error) for p in cropped if acquired[p].error is not None]
    return CentreCropFallback(photos=len(cropped), pairs=len(flagged), images=images, flagged_pairs=flagged)


def _check_files(csv_path: str | os.PathLike[str], paths: list[Path]) -> None:
    """A photo named in the CSV but absent is a malformed CSV (DataError), not a failure to acquire."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:MAX_EXAMPLES]) + (", ..." if len(missing) > MAX_EXAMPLES else "")
        raise DataError(f"{csv_path}: {len(missing)} image(s) named in the CSV do not exist: {shown}")


def _check_classes(csv_path: str | os.PathLike[str], same: np.ndarray, what: str) -> None:
    if same.all() or not same.any():
        raise DataError(f"{csv_path}: needs at least one genuine (same=1) and one impostor (same=0) {what}")


def _score(
    embedder: Embedder, acquired: dict[Path, Acquisition], left: list[Path], right: list[Path], ok: np.ndarray
) -> np.ndarray:
    """Cosine scores of the pairs kept by ``ok``; only the photos those pairs use are embedded (in path order)."""
    kept = [(a, b) for a, b, k in zip(left, right, ok, strict=True) if k]
    usable = sorted({p for pair in kept for p in pair})
    emb = dict(zip(usable, embedder.embed([acquired[p].crop for p in usable]), strict=True))
    return cosine_scores(np.stack([emb[a] for a, _ in kept]), np.stack([emb[b] for _, b in kept]))


def evaluate_pairs(
    csv_path: str | os.PathLike[str],
    embedder: Embedder,
    threshold: float | None = None,
    no_face: NoFacePolicy = DEFAULT_NO_FACE_POLICY,
) -> dict[str, Any]:
    """Score the CSV pairs; accuracy at the pooled EER threshold (and at ``threshold`` if given), EER, TAR.

    All rates are fractions in [0, 1]. ``accuracy_std`` is None: there are no folds.

    Failure to acquire (ISO/IEC 19795-1): a photo counts as FTA when no sample could be taken from it,
    because the detector found no usable face (NoFaceError, FaceTooSmallError) or because the file exists
    but cannot be decoded (ImageError: empty, truncated, not an image). Unreadable photos are FTA under
    every policy but ``error``, and are named with their error class like the others; a photo the CSV
    names that does not exist is a DataError (a malformed CSV), never FTA. ``no_face`` decides what
    happens to a photo without a face (see :data:`NoFacePolicy`).

    The metrics and ``n_pairs`` cover the scored pairs only; ``n_pairs_total`` counts the CSV's pairs,
    ``pair_scores`` follows the CSV's order with None for an unscored pair, ``failure_to_acquire`` is a
    :class:`FailureToAcquire` and, under ``centre-crop``, ``centre_crop`` a :class:`CentreCropFallback`.
    """
    t0 = time.perf_counter()
    policy = check_policy(no_face)
    left, right, same = read_pairs_csv(csv_path)
    _check_classes(csv_path, same, "pair")
    base = Path(csv_path).resolve().parent
    unique = sorted(set(left) | set(right))
    _check_files(csv_path, unique)
    acquired = acquire_all(csv_path, unique, policy)
    failed = [(p, a.error) for p, a in acquired.items() if a.crop is None and a.error is not None]
    got = {p: a.crop is not None for p, a in acquired.items()}
    ok = np.array([got[a] and got[b] for a, b in zip(left, right, strict=True)], dtype=bool)
    fta = _failure_to_acquire(policy, failed, len(unique), int((~ok).sum()), len(same), base)
    if not ok.any():
        raise DataError(
            f"{csv_path}: no pair could be scored: {fta.photos} of {fta.photos_total} photos failed to acquire "
            "(no face or unreadable); check the photos, or score faceless ones with --no-face centre-crop"
        )
    _check_classes(csv_path, same[ok], f"scored pair ({fta.pairs_unscored} pairs unscored by failure to acquire)")
    scores, labels = _score(embedder, acquired, left, right, ok), same[ok]
    e, e_thr = metrics.eer(scores, labels)
    pair_scores: list[float | None] = [None] * len(same)
    for i, s in zip(np.flatnonzero(ok), scores, strict=True):
        pair_scores[i] = float(s)
    result: dict[str, Any] = {
        "accuracy": metrics.accuracy(scores, labels, e_thr),
        "accuracy_std": None,
        "eer": e,
        "tar_at_far_1e-2": metrics.tar_at_far(scores, labels, 1e-2),
        "tar_at_far_1e-3": metrics.tar_at_far(scores, labels, 1e-3),
        "n_pairs": len(scores),
        "n_pairs_total": len(same),
        "eer_threshold": e_thr,
        "pair_scores": pair_scores,
        "no_face_policy": policy,
        "failure_to_acquire": fta,
    }
    if policy == "centre-crop":
        result["centre_crop"] = _centre_crop_fallback(acquired, left, right, base)
    if threshold is not None:
        result["threshold"] = float(threshold)
        result["accuracy_at_threshold"] = metrics.accuracy(scores, labels, threshold)
    result.update(seconds=round(time.perf_counter() - t0, 2), scores=scores, labels=labels)
    return result
