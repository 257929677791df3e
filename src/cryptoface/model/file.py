"""Versioned, self-describing model file: one ``.npz`` holding the fused tensors and a JSON header.

The header (stored under the key ``__header__`` as UTF-8 bytes) names the format, its version, the
architecture, resolution, patch grid, the layout of every tensor and free-form metadata (source,
training recipe, norm statistics, threshold). Tensors are float64 and named
``patch{p}/stem``, ``patch{p}/block{b}/{q1,conv1,q2,conv2,shortcut_scale,shortcut_conv,shortcut_bias}``,
``patch{p}/pool_q``, ``patch{p}/head`` and ``bias``; quadratics are stored as (2, C) rows [b, c].
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.errors import ModelFileError
from cryptoface.model import spec
from cryptoface.model.fused import FusedBlock, FusedModel, FusedPatchNet, Quadratic

FORMAT_NAME = "cryptoface-fused"
FORMAT_VERSION = 1

LAYOUTS = {
    "stem": "conv weight (out, in, kh, kw), stride 1, padding 1",
    "q": "monic quadratic rows [b, c]: q(x) = x^2 + b x + c per channel, shape (2, C)",
    "conv1": "conv weight (out, in, 3, 3), stride = block stride, padding 1; a2 of q1 folded on 'in'",
    "conv2": "conv weight (out, out, 3, 3), stride 1, padding 1; a2 of q2 folded on 'in'",
    "shortcut_scale": "identity shortcut: per-channel multiplier of q1(x) (= a2 of q1), shape (C,)",
    "shortcut_conv": "1x1 conv (out, in), stride = block stride, a2 of q1 and BN scale folded",
    "shortcut_bias": "shortcut BatchNorm shift, shape (out,)",
    "head": "(256, 256) acting on flatten(avgpool 2x2 of pool_q(x)) with index c*4 + y*2 + x",
    "bias": "(256,) added once to the sum of the per-patch head outputs",
}


def _quad_to_array(q: Quadratic) -> np.ndarray:
    return np.stack([q.b, q.c]).astype(np.float64)


def _quad_from_array(a: np.ndarray) -> Quadratic:
    return Quadratic(b=np.asarray(a[0], np.float64), c=np.asarray(a[1], np.float64))


def model_tensors(model: FusedModel) -> dict[str, np.ndarray]:
    """Flatten a FusedModel into the named tensors stored in the file."""
    out: dict[str, np.ndarray] = {"bias": np.asarray(model.bias, np.float64)}
    for p, net in enumerate(model.patches):
        out[f"patch{p}/stem"] = net.stem
        for b, blk in enumerate(net.blocks):
            pre = f"patch{p}/block{b}/"
            out[pre + "q1"] = _quad_to_array(blk.q1)
            out[pre + "conv1"] = blk.conv1
            out[pre + "q2"] = _quad_to_array(blk.q2)
            out[pre + "conv2"] = blk.conv2
            for name in ("shortcut_scale", "shortcut_conv", "shortcut_bias"):
                value = getattr(blk, name)
                if value is not None:
                    out[pre + name] = value
        out[f"patch{p}/pool_q"] = _quad_to_array(net.pool_q)
        out[f"patch{p}/head"] = net.head
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in out.items()}


def header_for(model: FusedModel) -> dict[str, Any]:
    """The JSON header describing a model."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "architecture": model.architecture,
        "resolution": model.resolution,
        "patch_size": spec.PATCH_SIZE,
        "grid": [model.grid, model.grid],
        "n_patches": model.n_patches,
        "embedding_dim": spec.EMBEDDING_DIM,
        "blocks": [{"c_in": b.c_in, "c_out": b.c_out, "stride": b.stride} for b in spec.BLOCKS],
        "input": {
            "color": "RGB",
            "alignment": "5-point similarity onto the ArcFace 112x112 template",
            "normalize": "(x / 255 - 0.5) / 0.5",
            "resize": "antialiased bilinear 112 -> resolution, after normalisation",
            "layout": "CHW float64; patches cut in raster order (row * grid + col), 32x32 each",
        },
        "layouts": LAYOUTS,
        "metadata": model.metadata,
    }


def save_model(model: FusedModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` atomically to ``path`` (.npz); returns the path."""
    path = Path(path)
    header = json.dumps(header_for(model), sort_keys=True).encode()
    arrays = model_tensors(model)
    arrays["__header__"] = np.frombuffer(header, dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the JSON header of a model file."""
    with _open(path) as data:
        return _header(data, path)


def load_model(path: str | os.PathLike[str]) -> FusedModel:
    """Load and validate a model file written by :func:`save_model`."""
    with _open(path) as data:
        header = _header(data, path)
        resolution = int(header["resolution"])
        n_patches = spec.grid_for(resolution) ** 2
        if header.get("n_patches") != n_patches:
            raise ModelFileError(f"{path}: header says {header.get('n_patches')} patches, expected {n_patches}")

        def get(name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
            if name not in data.files:
                raise ModelFileError(f"{path}: tensor {name!r} is missing")
            arr = np.asarray(data[name], dtype=np.float64)
            if shape is not None and arr.shape != shape:
                raise ModelFileError(f"{path}: tensor {name!r} has shape {arr.shape}, expected {shape}")
            return arr

        patches = []
        for p in range(n_patches):
            blocks = []
            for b, bs in enumerate(spec.BLOCKS):
                pre = f"patch{p}/block{b}/"
                kw: dict[str, Any] = {}
                if bs.identity_shortcut:
                    kw["shortcut_scale"] = get(pre + "shortcut_scale", (bs.c_in,))
                else:
                    kw["shortcut_conv"] = get(pre + "shortcut_conv", (bs.c_out, bs.c_in))
                    kw["shortcut_bias"] = get(pre + "shortcut_bias", (bs.c_out,))
                blocks.append(
                    FusedBlock(
                        stride=bs.stride,
                        q1=_quad_from_array(get(pre + "q1", (2, bs.c_in))),
                        conv1=get(pre + "conv1", (bs.c_out, bs.c_in, 3, 3)),
                        q2=_quad_from_array(get(pre + "q2", (2, bs.c_out))),
                        conv2=get(pre + "conv2", (bs.c_out, bs.c_out, 3, 3)),
                        **kw,
                    )
                )
            patches.append(
                FusedPatchNet(
                    stem=get(f"patch{p}/stem", (spec.STEM_CHANNELS, 3, 3, 3)),
                    blocks=tuple(blocks),
                    pool_q=_quad_from_array(get(f"patch{p}/pool_q", (2, spec.POOL_CHANNELS))),
                    head=get(f"patch{p}/head", (spec.EMBEDDING_DIM, spec.EMBEDDING_DIM)),
                )
            )
        bias = get("bias", (spec.EMBEDDING_DIM,))
    for name, arr in model_tensors(FusedModel(header["architecture"], resolution, tuple(patches), bias)).items():
        if not np.all(np.isfinite(arr)):
            raise ModelFileError(f"{path}: tensor {name!r} has non-finite values")
    return FusedModel(
        architecture=str(header["architecture"]),
        resolution=resolution,
        patches=tuple(patches),
        bias=bias,
        metadata=dict(header.get("metadata", {})),
    )


def _open(path: str | os.PathLike[str]):
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file not found: {p}")
    try:
        return np.load(p, allow_pickle=False)
    except Exception as exc:  # zipfile/numpy raise several types for a damaged file
        raise ModelFileError(f"{p} is not a CryptoFace model file (.npz): {exc}") from exc


def _header(data: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    if "__header__" not in data.files:
        raise ModelFileError(f"{path}: no __header__ entry; not a CryptoFace model file")
    try:
        header = json.loads(bytes(data["__header__"]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: header is not valid JSON: {exc}") from exc
    if header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: format {header.get('format')!r}, expected {FORMAT_NAME!r}")
    if header.get("version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file version {header.get('version')} is not supported (this build reads "
            f"version {FORMAT_VERSION}); re-export it with this version of cryptoface"
        )
    return header
