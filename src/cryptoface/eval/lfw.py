"""LFW verification: parse pairs.txt, align every photo once (cached), score the 6,000 pairs 10-fold.

Aligned crops are cached in ``lfw-crops-<hash>.npz`` (keyed by the LFW folder and the pipeline version)
and embeddings next to it in ``lfw-emb-<hash>.npz`` (keyed also by the embedder's weights), so a second
run only reads the caches and recomputes the metrics.

``pairs.txt`` starts with ``"<folds> <n>"`` (LFW: ``10 300``) and then, per fold, ``n`` genuine lines
``name i j`` followed by ``n`` impostor lines ``name1 i name2 j``; images are ``<Name>/<Name>_NNNN.jpg``
under the LFW folder (or under its ``lfw/`` sub-folder). Fold k is the k-th block of 2n lines.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cryptoface.errors import DataError, FaceTooSmallError, ImageError, NoFaceError
from cryptoface.eval import metrics
from cryptoface.eval.embedders import Embedder, cosine_scores
from cryptoface.face.fallback import centre_crop
from cryptoface.face.image import load_image_file
from cryptoface.face.pipeline import PIPELINE_VERSION, align_face

CACHE_ENV = "CRYPTOFACE_CACHE"
# LFW photos are centred on the person named in pairs.txt: keep the detected face nearest the centre.
LFW_FACE_SELECT = "center"


def crop_version(select: str = LFW_FACE_SELECT) -> str:
    """Version string of the cached crops: the pipeline version and the face-selection rule."""
    return f"{PIPELINE_VERSION}|select={select}"


@dataclass(frozen=True)
class LfwPairs:
    """Pairs in pairs.txt order: relative image paths, genuine flag and fold index of each pair."""

    left: list[str]
    right: list[str]
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.left)


def image_relpath(name: str, index: int) -> str:
    return f"{name}/{name}_{index:04d}.jpg"


def read_pairs(pairs_file: str | os.PathLike[str]) -> LfwPairs:
    """Parse and validate an LFW ``pairs.txt``; raises DataError when it is missing or malformed."""
    path = Path(pairs_file)
    if not path.is_file():
        raise DataError(f"{path} not found; --lfw-dir must be the LFW folder holding pairs.txt and <Name>/ folders")
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        n_folds, per_fold = (int(v) for v in lines[0])
    except (IndexError, ValueError) as exc:
        raise DataError(f"{path}: first line must be '<folds> <pairs per fold>', e.g. '10 300'") from exc
    body = lines[1:]
    if len(body) != n_folds * per_fold * 2:
        raise DataError(f"{path}: expected {n_folds * per_fold * 2} pair lines, found {len(body)}")
    left, right, same, fold = [], [], [], []
    for i, parts in enumerate(body):
        genuine = (i % (2 * per_fold)) < per_fold
        try:
            if genuine and len(parts) == 3:
                a, b = image_relpath(parts[0], int(parts[1])), image_relpath(parts[0], int(parts[2]))
            elif not genuine and len(parts) == 4:
                a, b = image_relpath(parts[0], int(parts[1])), image_relpath(parts[2], int(parts[3]))
            else:
                raise ValueError("wrong number of fields")
        except ValueError as exc:
            kind = "'name i j'" if genuine else "'name1 i name2 j'"
            raise DataError(f"{path}:{i + 2}: expected a {kind} line, got {' '.join(parts)!r}") from exc
        left.append(a)
        right.append(b)
        same.append(genuine)
        fold.append(i // (2 * per_fold))
    return LfwPairs(left, right, np.array(same, dtype=bool), np.array(fold, dtype=np.int64))


def limit_pairs(pairs: LfwPairs, n: int) -> LfwPairs:
    """Keep the first ``n`` genuine and the first ``n`` impostor pairs of every fold (for smoke tests)."""
    keep = np.zeros(len(pairs), dtype=bool)
    for k in np.unique(pairs.fold):
        for genuine in (True, False):
            idx = np.nonzero((pairs.fold == k) & (pairs.same == genuine))[0]
            keep[idx[:n]] = True
    sel = np.nonzero(keep)[0]
    return LfwPairs([pairs.left[i] for i in sel], [pairs.right[i] for i in sel], pairs.same[sel], pairs.fold[sel])


def image_root(lfw_dir: str | os.PathLike[str]) -> Path:
    """Folder holding the <Name>/ folders: the LFW folder itself or its ``lfw/`` sub-folder."""
    root = Path(lfw_dir)
    if not root.is_dir():
        raise DataError(f"LFW folder not found: {root}")
    nested = root / "lfw"
    return nested if nested.is_dir() and not (root / "pairs.txt").is_file() else root


def crop_cache_path(
    lfw_dir: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None, select: str = LFW_FACE_SELECT
) -> Path:
    """``<cache>/lfw-crops-<hash of the LFW path, pipeline version and face selection>.npz``.

    The cache folder is ``cache_dir``, else ``$CRYPTOFACE_CACHE``, else ``~/.cache/cryptoface``.
    """
    base = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cryptoface").expanduser()
    key = f"{Path(lfw_dir).resolve()}|{crop_version(select)}"
    return base / f"lfw-crops-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _centre_crop(path: Path) -> np.ndarray:
    """Fallback when no face is detected: the central half of the photo, resized to 112x112."""
    return centre_crop(load_image_file(path))


def _read_cache(path: Path, version: str) -> dict[str, tuple[np.ndarray, bool]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["version"]) != version:
                return {}
            crops, fallback = data["crops"], data["fallback"]
            return {str(p): (crops[i], bool(fallback[i])) for i, p in enumerate(data["paths"])}
    except Exception:  # a damaged or foreign cache is rebuilt, never trusted
        return {}


def _write_cache(path: Path, entries: dict[str, tuple[np.ndarray, bool]], version: str) -> None:
    names = sorted(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        version=np.array(version),
        paths=np.array(names),
        crops=np.stack([entries[n][0] for n in names]),
        fallback=np.array([entries[n][1] for n in names], dtype=bool),
    )
    os.replace(tmp, path)


def aligned_crops(
    lfw_dir: str | os.PathLike[str],
    relpaths: list[str],
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    select: str = LFW_FACE_SELECT,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Aligned crops of the given LFW images (from the cache, aligning and caching the missing ones).

    Returns ``(crops by relative path, relative paths that fell back to a centre crop)``.
    """
    root = image_root(lfw_dir)
    cache = crop_cache_path(lfw_dir, cache_dir, select)
    version = crop_version(select)
    entries = _read_cache(cache, version)
    missing = sorted(set(relpaths) - set(entries))
    if missing:
        for rel in tqdm(missing, desc="aligning LFW photos", unit="img", disable=not progress):
            path = root / rel
            if not path.is_file():
                raise DataError(f"LFW image {path} (named in pairs.txt) is missing")
            try:
                entries[rel] = (align_face(path, aligned=False, select=select, min_score=None), False)
            except (NoFaceError, FaceTooSmallError):
                entries[rel] = (_centre_crop(path), True)
            except ImageError as exc:
                raise DataError(f"LFW image {path} cannot be read: {exc}") from exc
        _write_cache(cache, entries, version)
    crops = {rel: entries[rel][0] for rel in relpaths}
    fallback = sorted({rel for rel in relpaths if entries[rel][1]})
    return crops, fallback


def _embedding_cache_path(lfw_dir: str | os.PathLike[str], embedder: Embedder, cache_dir, select: str) -> Path | None:
    key = getattr(embedder, "cache_key", None)
    if not key:
        return None
    crops = crop_cache_path(lfw_dir, cache_dir, select)
    digest = hashlib.sha256(f"{crops.name}|{key}".encode()).hexdigest()[:16]
    return crops.with_name(f"lfw-emb-{digest}.npz")


def _read_embeddings(lfw_dir, embedder: Embedder, cache_dir, select: str) -> dict[str, np.ndarray]:
    path = _embedding_cache_path(lfw_dir, embedder, cache_dir, select)
    if path is None or not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {str(p): f for p, f in zip(data["paths"], data["features"], strict=True)}
    except Exception:  # damaged cache: recompute
        return {}


def _write_embeddings(lfw_dir, embedder: Embedder, cache_dir, select: str, feats: dict[str, np.ndarray]) -> None:
    path = _embedding_cache_path(lfw_dir, embedder, cache_dir, select)
    if path is None:
        return
    names = sorted(feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, paths=np.array(names), features=np.stack([feats[n] for n in names]))
    os.replace(tmp, path)


def evaluate_lfw(
    lfw_dir: str | os.PathLike[str],
    embedder: Embedder,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    select: str = LFW_FACE_SELECT,
) -> dict[str, Any]:
    """Run the 10-fold LFW protocol; returns the fields of the JSON report (fractions in [0, 1]).

    ``select`` picks the face in photos with several: "center" (default, the LFW subject) or "largest".
    """
    t0 = time.perf_counter()
    pairs = read_pairs(Path(lfw_dir) / "pairs.txt")
    if limit is not None:
        pairs = limit_pairs(pairs, limit)
    names = sorted(set(pairs.left) | set(pairs.right))
    crops, fallback = aligned_crops(lfw_dir, names, cache_dir, progress, select)
    t_align = time.perf_counter() - t0
    feats = _read_embeddings(lfw_dir, embedder, cache_dir, select)
    todo = [r for r in names if r not in feats]
    chunk = 256
    for start in tqdm(
        range(0, len(todo), chunk), desc=f"embedding ({embedder.name})", unit="batch", disable=not progress or not todo
    ):
        part = todo[start : start + chunk]
        for rel, f in zip(part, embedder.embed([crops[r] for r in part]), strict=True):
            feats[rel] = f
    if todo:
        _write_embeddings(lfw_dir, embedder, cache_dir, select, feats)
    scores = cosine_scores(np.stack([feats[r] for r in pairs.left]), np.stack([feats[r] for r in pairs.right]))
    result = summarize(scores, pairs.same, pairs.fold)
    result.update(
        face_select=select,
        n_images=len(names),
        n_fallback=len(fallback),
        fallback_images=fallback,
        seconds_align=round(t_align, 2),
        seconds=round(time.perf_counter() - t0, 2),
        scores=scores,
        labels=pairs.same,
    )
    return result


def summarize(scores: np.ndarray, same: np.ndarray, fold: np.ndarray) -> dict[str, Any]:
    """Protocol accuracy (k-fold), pooled EER and TAR@FAR, and the pooled ROC for plotting."""
    kf = metrics.kfold_accuracy(scores, same, fold)
    e, e_thr = metrics.eer(scores, same)
    return {
        "accuracy": kf.accuracy,
        "accuracy_std": kf.accuracy_std,
        "eer": e,
        "tar_at_far_1e-2": metrics.tar_at_far(scores, same, 1e-2),
        "tar_at_far_1e-3": metrics.tar_at_far(scores, same, 1e-3),
        "n_pairs": len(scores),
        "fold_accuracies": kf.fold_accuracies,
        "thresholds": kf.thresholds,
        "eer_threshold": e_thr,
    }
