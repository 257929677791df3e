"""The network's tail, finished in the clear by a refreshing client: pool quadratic, 2x2 average pool, head.

In the refresh protocol for Net4 (:meth:`cryptoface.params.LevelBudget.plan_end`) the server stops after the last
block and returns that block's output, encrypted; the client decrypts it and computes the embedding with the
tail's weights, which the server publishes (``GET /v1/model/tail``). The tail is a small, public part of the model
(per patch: 2 x 64 quadratic coefficients and a 256 x 256 head block, plus the shared bias); the stem and the
blocks stay on the server. :meth:`ModelTail.to_bytes` / :meth:`ModelTail.from_bytes` are the wire pair; the
reader treats its input as hostile (no pickles, a size cap, every shape and value checked).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass

import numpy as np

from cryptoface.errors import ModelFileError
from cryptoface.model import spec
from cryptoface.model.fused import FusedModel, Quadratic
from cryptoface.model.reference import pool_head, quadratic

MAX_TAIL_BYTES = 64 * 2**20  # Net16's tail is ~8.4 MB; anything far larger is not a tail
_FIELDS = ("pool_b", "pool_c", "head", "bias")


@dataclass(frozen=True, eq=False)
class ModelTail:
    """Per patch the pool quadratic's ``b``, ``c`` (n, C) and the head block (n, 256, C * 4), and the bias (256,)."""

    resolution: int
    pool_b: np.ndarray
    pool_c: np.ndarray
    head: np.ndarray
    bias: np.ndarray

    @classmethod
    def of(cls, model: FusedModel) -> ModelTail:
        """The tail of a fused model."""
        nets = model.patches
        return cls(int(model.resolution), np.stack([p.pool_q.b for p in nets]), np.stack([p.pool_q.c for p in nets]),
                   np.stack([p.head for p in nets]), np.asarray(model.bias, dtype=np.float64))

    @property
    def n_patches(self) -> int:
        return int(self.pool_b.shape[0])

    def embedding(self, activations: np.ndarray) -> np.ndarray:
        """The (256,) embedding from the last block's output of every patch (n, C, H, W)."""
        z = np.asarray(activations, dtype=np.float64)
        if z.ndim != 4 or z.shape[:2] != self.pool_b.shape or z.shape[2] != z.shape[3] or z.shape[2] % spec.POOL_GRID:
            raise ValueError(f"expected the last block's output ({self.n_patches}, {self.pool_b.shape[1]}, H, H), "
                             f"got {z.shape}")
        out = self.bias.copy()
        for p in range(self.n_patches):
            q = quadratic(z[p:p + 1], Quadratic(self.pool_b[p], self.pool_c[p]))
            out += pool_head(q, self.head[p])[0]
        return out

    def digest(self) -> str:
        """Content id: hex sha256 of the resolution and the arrays as little-endian numbers, in field order (the
        same whichever numpy or zip wrote the bytes: an inference result names its tail by it)."""
        h = hashlib.sha256(np.int64(self.resolution).astype("<i8").tobytes())
        for k in _FIELDS:
            h.update(np.ascontiguousarray(getattr(self, k), dtype="<f8").tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """The tail as an uncompressed ``.npz`` of float64 arrays (no pickles)."""
        buf = io.BytesIO()
        np.savez(buf, resolution=np.int64(self.resolution),
                 **{k: np.ascontiguousarray(getattr(self, k), dtype="<f8") for k in _FIELDS})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelTail:
        """A tail from :meth:`to_bytes`' output; ModelFileError for anything else.

        The bytes come from a server, so nothing is trusted: a zip of exactly the five stored (uncompressed)
        members, each ``.npy`` header checked for dtype and shape before a byte of its data is read, and no more
        data read than that shape holds (no pickles, no decompression bombs, no allocation a header asks for)."""
        if not isinstance(data, bytes | bytearray) or len(data) > MAX_TAIL_BYTES:
            raise ModelFileError(f"a model tail is bytes of at most {MAX_TAIL_BYTES} bytes")
        try:
            with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
                infos = zf.infolist()
                members = {info.filename: info for info in infos}
                if len(infos) != len(members) or set(members) != {f"{k}.npy" for k in ("resolution", *_FIELDS)}:
                    raise ModelFileError(f"a model tail holds resolution and {list(_FIELDS)}, got {sorted(members)}")
                if any(info.compress_type != zipfile.ZIP_STORED for info in members.values()):
                    raise ModelFileError("a model tail's members are stored uncompressed")
                resolution = int(_member(zf, members["resolution.npy"], "<i8", ()))
                try:
                    n = spec.grid_for(resolution) ** 2
                except ValueError as exc:
                    raise ModelFileError(f"a model tail for an unknown resolution: {exc}") from exc
                channels = spec.BLOCKS[-1].c_out
                shapes = {"pool_b": (n, channels), "pool_c": (n, channels), "bias": (spec.EMBEDDING_DIM,),
                          "head": (n, spec.EMBEDDING_DIM, channels * spec.POOL_GRID ** 2)}
                arrays = {k: _member(zf, members[f"{k}.npy"], "<f8", shape) for k, shape in shapes.items()}
        except ModelFileError:
            raise
        except Exception as exc:  # any other failure to parse hostile bytes gets the same answer
            raise ModelFileError(f"unreadable model tail: {type(exc).__name__}: {exc}") from exc
        for k, a in arrays.items():
            if not np.all(np.isfinite(a)):
                raise ModelFileError(f"model tail field {k!r} holds non-finite values")
        return cls(resolution, **arrays)


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """One ``.npy`` member of exactly ``dtype`` and ``shape`` (C order), its header checked before its data."""
    want = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * want.itemsize
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ModelFileError(f"{info.filename}: unsupported .npy version {version}")
        if got_dtype != want or tuple(got_shape) != shape or fortran:
            raise ModelFileError(f"model tail field {info.filename[:-4]!r}: expected {want} {shape} in C order, got "
                                 f"{got_dtype} {tuple(got_shape)}{' in Fortran order' if fortran else ''}")
        raw = f.read(size + 1)
    if len(raw) != size:
        raise ModelFileError(f"model tail field {info.filename[:-4]!r}: {len(raw)} bytes of data, expected {size}")
    return np.frombuffer(raw, dtype=want).reshape(shape).copy()


__all__ = ["MAX_TAIL_BYTES", "ModelTail"]
