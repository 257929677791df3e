"""The harness's ``face_dataset.h5`` from an LFW folder (``pairs.txt``) or a pairs CSV (``image1,image2,same``).

Format (the harness's ``face_dataset_store.py``, schema 1): datasets ``image0`` and ``image1`` (each photo's
encoded bytes, variable-length uint8, exactly as the file holds them), ``labels`` (int8, 1 = same person) and the
root attribute ``schema_version = 1``. We add ``name0``/``name1`` (the photos' paths, as pairs.txt or the CSV
names them), ``fold`` and the attributes ``source`` and ``selection``, which the harness ignores.

``limit`` keeps the first N pairs of a balanced order: genuine and impostor alternate, and with LFW's folds the
k-th genuine and k-th impostor pair of fold 0, then of fold 1, ... (round k over every fold before round k + 1),
so any prefix is as even across classes and folds as its length allows.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryptoface.errors import DataError, ImageError
from cryptoface.face.image import load_image_file

SCHEMA_VERSION = 1
STORE_NAME = "face_dataset.h5"


@dataclass(frozen=True)
class PairList:
    """Pairs in source order: image files, the names written in the source, genuine flags and folds."""

    left: list[Path]
    right: list[Path]
    names0: list[str]
    names1: list[str]
    same: np.ndarray
    fold: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.left)

    def take(self, index: np.ndarray) -> PairList:
        """The pairs at ``index``, in that order."""
        idx = [int(i) for i in index]
        return PairList([self.left[i] for i in idx], [self.right[i] for i in idx], [self.names0[i] for i in idx],
                        [self.names1[i] for i in idx], self.same[idx], self.fold[idx], self.source)


@dataclass(frozen=True)
class DatasetReport:
    """What was written: where, how many pairs of each class, over how many folds."""

    path: Path
    pairs: int
    genuine: int
    impostor: int
    folds: int
    source: str


def lfw_pairs(lfw_dir: str | os.PathLike[str]) -> PairList:
    """LFW's ``pairs.txt`` pairs (10 folds of 300 genuine + 300 impostor), read by ``cryptoface.eval.lfw``."""
    from cryptoface.eval.lfw import image_root, read_pairs

    pairs = read_pairs(Path(lfw_dir) / "pairs.txt")
    root = image_root(lfw_dir)
    return PairList([root / p for p in pairs.left], [root / p for p in pairs.right], list(pairs.left),
                    list(pairs.right), pairs.same.astype(bool), pairs.fold.astype(np.int64),
                    f"lfw:{(Path(lfw_dir) / 'pairs.txt').resolve()}")


def csv_pairs(csv_path: str | os.PathLike[str]) -> PairList:
    """A pairs CSV as ``cryptoface eval pairs`` reads it (one fold)."""
    from cryptoface.eval.pairs import read_pairs_csv

    left, right, same = read_pairs_csv(csv_path)
    base = Path(csv_path).resolve().parent

    def shown(p: Path) -> str:
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return str(p)

    return PairList(left, right, [shown(p) for p in left], [shown(p) for p in right], same.astype(bool),
                    np.zeros(len(same), dtype=np.int64), f"csv:{Path(csv_path).resolve()}")


def balanced_order(same: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Indices in rounds: round k takes the k-th genuine then the k-th impostor pair of each fold in turn."""
    groups = [np.nonzero((fold == f) & (same == g))[0] for f in np.unique(fold) for g in (True, False)]
    rounds = max((len(g) for g in groups), default=0)
    order = [int(g[k]) for k in range(rounds) for g in groups if k < len(g)]
    return np.array(order, dtype=np.int64)


def select_pairs(pairs: PairList, limit: int | None) -> PairList:
    """The first ``limit`` pairs of :func:`balanced_order` (all of them, balanced, when ``limit`` is None)."""
    order = balanced_order(pairs.same, pairs.fold)
    if limit is not None:
        if limit < 1:
            raise DataError(f"--limit must be at least 1, got {limit}")
        if limit > len(order):
            raise DataError(f"--limit {limit} exceeds the {len(order)} pairs of {pairs.source}")
        order = order[:limit]
    return pairs.take(order)


def _encoded(path: Path) -> np.ndarray:
    """The file's bytes as uint8, after checking they decode as an image (DataError otherwise)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        load_image_file(data)
    except ImageError as exc:
        raise DataError(f"{path}: {exc}") from exc
    return np.frombuffer(data, dtype=np.uint8)


def write_store(pairs: PairList, out: str | os.PathLike[str], selection: str = "all") -> DatasetReport:
    """Write ``pairs`` as the harness's HDF5 store at ``out`` (atomically: a temporary file, then a rename)."""
    import h5py

    if len(pairs) == 0:
        raise DataError("no pairs to write")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        vlen = h5py.vlen_dtype(np.dtype("uint8"))
        text = h5py.string_dtype("utf-8")
        n = len(pairs)
        with h5py.File(tmp, "w") as store:
            image0 = store.create_dataset("image0", (n,), dtype=vlen)
            image1 = store.create_dataset("image1", (n,), dtype=vlen)
            for i, (a, b) in enumerate(zip(pairs.left, pairs.right, strict=True)):
                image0[i] = _encoded(a)
                image1[i] = _encoded(b)
            store.create_dataset("labels", data=pairs.same.astype(np.int8))
            store.create_dataset("name0", data=pairs.names0, dtype=text)
            store.create_dataset("name1", data=pairs.names1, dtype=text)
            store.create_dataset("fold", data=pairs.fold.astype(np.int16))
            store.attrs["schema_version"] = SCHEMA_VERSION
            store.attrs["source"] = pairs.source
            store.attrs["selection"] = selection
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    genuine = int(pairs.same.sum())
    return DatasetReport(target, len(pairs), genuine, len(pairs) - genuine, len(np.unique(pairs.fold)), pairs.source)


def build_dataset(out: str | os.PathLike[str], *, lfw_dir: str | os.PathLike[str] | None = None,
                  csv: str | os.PathLike[str] | None = None, limit: int | None = None) -> DatasetReport:
    """Select (balanced, first ``limit``) and write the pairs of exactly one source: an LFW folder or a CSV."""
    if (lfw_dir is None) == (csv is None):
        raise DataError("give exactly one source: an LFW folder (with pairs.txt) or a pairs CSV")
    pairs = lfw_pairs(lfw_dir) if lfw_dir is not None else csv_pairs(csv)  # type: ignore[arg-type]
    selection = "all, balanced order" if limit is None else f"first {limit} of the balanced order"
    return write_store(select_pairs(pairs, limit), out, selection)
