"""Training pack: one self-contained file of everything a training run reads, to train on another machine.

A GPU machine lent for a few minutes has neither the SFace model, nor the LFW photos for the guard, nor
room for the tar shards' per-file padding. A pack holds, for every crop that has a teacher feature and
passed the LFW guard (in ``index.csv`` order):

* the crop's original JPEG bytes, concatenated (lossless: the same pixels as the folder);
* its identity and source labels;
* the teacher features, quantised to int8 per vector (unit vectors; cosine to the float32 feature
  >= 0.9999), which keeps the file small;
* the guard report and the source folder's digest as JSON metadata.

``cryptoface train --config C --make-pack FILE`` writes one; ``pack = FILE`` in a config trains from it.
No torch here.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cryptoface.errors import DataError
from cryptoface.face.align import CROP_SIZE
from cryptoface.train.data import TrainIndex, decode_crop, iter_crop_bytes

PACK_FORMAT = "cryptoface-train-pack"
PACK_VERSION = 1
ARRAYS = ("member", "identity", "source", "jpeg", "offsets", "teacher_q", "teacher_scale")


@dataclass(frozen=True)
class TrainPack:
    """A read pack: index (member / identity / source), JPEG bytes with offsets, teacher (N, V, 128) float32."""

    index: TrainIndex
    jpeg: np.ndarray
    offsets: np.ndarray
    teacher: np.ndarray
    meta: dict[str, Any]


def quantise(teacher: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-vector symmetric int8 quantisation of (N, V, D) features: (q int8, scale float32 (N, V))."""
    t = np.asarray(teacher, np.float32)
    scale = np.maximum(np.abs(t).max(axis=-1), 1e-12) / 127.0
    q = np.clip(np.rint(t / scale[..., None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _strings(values: list[str]) -> np.ndarray:
    """Newline-joined UTF-8 (numpy's own string arrays are UTF-32: 4x the bytes)."""
    if any("\n" in v for v in values):
        raise DataError("a crop name or label contains a newline")
    return np.frombuffer("\n".join(values).encode(), np.uint8)


def _unstrings(arr: np.ndarray, n: int) -> list[str]:
    out = arr.tobytes().decode().split("\n") if n else []
    if len(out) != n:
        raise DataError(f"pack string table has {len(out)} entries, expected {n}")
    return out


def dequantise(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[..., None]


def read_jpeg_bytes(index: TrainIndex, rows: np.ndarray, progress: bool = True) -> list[bytes]:
    """The stored JPEG bytes of ``rows`` of ``index``, in ``rows`` order."""
    where = {int(i): k for k, i in enumerate(rows)}
    out: list[bytes] = [b""] * len(rows)
    for i, data in tqdm(iter_crop_bytes(index, rows), total=len(rows), desc="reading crops", unit="img",
                        disable=not progress):
        out[where[i]] = data
    return out


def write_pack(
    path: str | os.PathLike[str],
    index: TrainIndex,
    rows: np.ndarray,
    teacher: np.ndarray,
    meta: dict[str, Any],
    progress: bool = True,
) -> Path:
    """Write the crops ``rows`` of ``index`` with their teacher features (N_all, V, D) and ``meta``; atomic."""
    rows = np.asarray(rows, np.int64)
    blobs = read_jpeg_bytes(index, rows, progress)
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    q, scale = quantise(teacher[rows])
    meta = {
        **meta,
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "crops": len(rows),
        "source_digest": index.digest,
        "teacher_views": int(teacher.shape[1]),
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            meta=np.array(json.dumps(meta)),
            member=_strings([index.member[i] for i in rows]),
            identity=_strings([index.identity[i] for i in rows]),
            source=_strings([index.source[i] for i in rows]),
            jpeg=np.frombuffer(b"".join(blobs), np.uint8),
            offsets=offsets,
            teacher_q=q,
            teacher_scale=scale,
        )
    os.replace(tmp, out)
    return out


def read_pack(path: str | os.PathLike[str]) -> TrainPack:
    """Load a pack; raises DataError when the file is missing or is not a pack of this version."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"training pack {p} not found (make one with `cryptoface train --make-pack`)")
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in ARRAYS}
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{p} is not a cryptoface training pack: {exc}") from exc
    if meta.get("format") != PACK_FORMAT or meta.get("version") != PACK_VERSION:
        raise DataError(f"{p}: pack format {meta.get('format')} v{meta.get('version')}, expected v{PACK_VERSION}")
    n = len(arrays["offsets"]) - 1
    index = TrainIndex(
        root=p,
        shard=["pack"] * n,
        member=_unstrings(arrays["member"], n),
        identity=_unstrings(arrays["identity"], n),
        source=_unstrings(arrays["source"], n),
        digest=str(meta["source_digest"]),
    )
    teacher = dequantise(arrays["teacher_q"], arrays["teacher_scale"])
    return TrainPack(index, arrays["jpeg"], arrays["offsets"], teacher, meta)


def decode_pack(pack: TrainPack, workers: int | None = None, progress: bool = True) -> np.ndarray:
    """All crops of a pack as an (N, 112, 112, 3) RGB uint8 array (OpenCV decodes in threads)."""
    n = len(pack.index)
    out = np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    buf = pack.jpeg.tobytes()
    off = pack.offsets

    def one(i: int) -> None:
        out[i] = decode_crop(buf[off[i] : off[i + 1]], f"pack:{pack.index.member[i]}")

    with ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1)) as ex:
        list(tqdm(ex.map(one, range(n)), total=n, desc="decoding pack", unit="img", disable=not progress))
    return out
