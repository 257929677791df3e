"""Training crops: the sharded ``faces-train`` folder (tar shards + ``index.csv``) decoded once and cached.

Folder layout (see ``shared/data/faces-train/SOURCES.md``): ``index.csv`` with the columns
``shard,member,identity,source,orig_path,aligned`` and tar shards whose members are 112x112 JPEG crops
already aligned to the ArcFace template by YuNet. ``identity`` is ``celeba:<id>``, ``aaf:<serial>`` (one
image per person) or empty (UTKFace, unlabelled).

All crops are decoded once into one ``(N, 112, 112, 3)`` RGB uint8 array and cached as
``<cache>/train-crops-<hash>.npy`` (the hash covers the folder path and the bytes of ``index.csv``), so
later runs memory-map it instead of decoding ~24k JPEGs again. No torch here: the guard, the teacher
cache and the ``ranges`` command use it too.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cryptoface.errors import DataError
from cryptoface.eval.lfw import CACHE_ENV
from cryptoface.face.align import CROP_SIZE

INDEX_COLUMNS = ("shard", "member", "identity", "source", "orig_path", "aligned")


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """``path``, else ``$CRYPTOFACE_CACHE``, else ``~/.cache/cryptoface`` (same rule as the LFW caches)."""
    return Path(path or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cryptoface").expanduser()


@dataclass(frozen=True)
class TrainIndex:
    """Rows of ``index.csv`` (in file order) and a digest identifying the folder's content."""

    root: Path
    shard: list[str]
    member: list[str]
    identity: list[str]
    source: list[str]
    digest: str

    def __len__(self) -> int:
        return len(self.member)


def read_index(train_dir: str | os.PathLike[str]) -> TrainIndex:
    """Parse ``<train_dir>/index.csv``; raises DataError when it is missing or lacks a column."""
    root = Path(train_dir)
    path = root / "index.csv"
    if not path.is_file():
        raise DataError(f"{path} not found; --train-dir must be a faces-train folder (tar shards + index.csv)")
    raw = path.read_bytes()
    rows = list(csv.DictReader(raw.decode().splitlines()))
    if not rows or any(c not in rows[0] for c in INDEX_COLUMNS[:4]):
        raise DataError(f"{path}: expected the columns {', '.join(INDEX_COLUMNS)}")
    digest = hashlib.sha256(f"{root.resolve()}|".encode() + raw).hexdigest()[:16]
    return TrainIndex(
        root=root,
        shard=[r["shard"] for r in rows],
        member=[r["member"] for r in rows],
        identity=[r["identity"] or "" for r in rows],
        source=[r["source"] for r in rows],
        digest=digest,
    )


def decode_crop(data: bytes, where: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{where}: not a decodable image")
    if img.shape[:2] != (CROP_SIZE, CROP_SIZE):
        raise DataError(f"{where}: expected an aligned {CROP_SIZE}x{CROP_SIZE} crop, got {img.shape[1]}x{img.shape[0]}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def iter_crop_bytes(index: TrainIndex, rows: Iterable[int] | None = None) -> Iterator[tuple[int, bytes]]:
    """(row, stored JPEG bytes) for ``rows`` of ``index`` (default: all), read shard by shard in file order.

    Raises DataError when a shard named in ``index.csv`` is missing or a requested crop is not in its shard.
    """
    wanted = range(len(index)) if rows is None else rows
    pos = {(index.shard[i], index.member[i]): int(i) for i in wanted}
    missing = set(pos.values())
    for shard in sorted({shard for shard, _ in pos}):
        path = index.root / shard
        if not path.is_file():
            raise DataError(f"shard {path} (named in index.csv) is missing")
        with tarfile.open(path) as tar:
            for info in tar:
                i = pos.get((shard, info.name))
                if i is None or not info.isfile():
                    continue
                f = tar.extractfile(info)
                assert f is not None
                missing.discard(i)
                yield i, f.read()
    if missing:
        raise DataError(f"{len(missing)} crops named in index.csv are missing, e.g. {index.member[min(missing)]}")


def decode_crops(index: TrainIndex, progress: bool = True) -> np.ndarray:
    """Decode every crop of ``index`` (shard by shard) into an (N, 112, 112, 3) RGB uint8 array."""
    out = np.zeros((len(index), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    bar = tqdm(total=len(index), desc="decoding training crops", unit="img", disable=not progress)
    for i, data in iter_crop_bytes(index):
        out[i] = decode_crop(data, f"{index.shard[i]}:{index.member[i]}")
        bar.update(1)
    bar.close()
    return out


def load_crops(index: TrainIndex, cache: str | os.PathLike[str] | None = None, progress: bool = True) -> np.ndarray:
    """All crops of ``index``, from ``train-crops-<digest>.npy`` in the cache (decoded and written if absent)."""
    path = cache_dir(cache) / f"train-crops-{index.digest}.npy"
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (len(index), CROP_SIZE, CROP_SIZE, 3) and arr.dtype == np.uint8:
            return arr
    crops = decode_crops(index, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
    np.save(tmp, crops)
    os.replace(tmp, path)
    return crops


def labelled_identities(index: TrainIndex, rows: Iterable[int], min_images: int = 2) -> dict[str, int]:
    """Class id of every identity with at least ``min_images`` images among ``rows`` (sorted by name).

    Only identities with several images carry a classification signal (All-Age-Faces has one image per
    person, UTKFace none), so in practice these are the CelebA ids.
    """
    counts: dict[str, int] = {}
    for i in rows:
        ident = index.identity[i]
        if ident:
            counts[ident] = counts.get(ident, 0) + 1
    names = sorted(k for k, n in counts.items() if n >= min_images)
    return {k: j for j, k in enumerate(names)}
