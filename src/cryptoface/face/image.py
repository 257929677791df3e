"""Decode an image file or bytes into an RGB uint8 array."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cryptoface.errors import ImageError

ImageSource = str | os.PathLike | bytes | bytearray | memoryview


def _read_bytes(source: ImageSource) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "image bytes"
    path = Path(source)
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if not path.is_file():
        raise ImageError(f"not a file: {path}")
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc}") from exc


def _looks_truncated(data: bytes) -> bool:
    """JPEG without its end-of-image marker, or PNG without its IEND chunk (OpenCV may still decode them)."""
    if data[:3] == b"\xff\xd8\xff":
        # The entropy-coded scan after the last start-of-scan marker must be closed by end-of-image.
        last_scan = data.rfind(b"\xff\xda")
        return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data
    return False


def load_image_file(source: ImageSource) -> np.ndarray:
    """Decode a JPEG/PNG (or any format OpenCV reads) from a path or bytes into an (H, W, 3) RGB uint8 array.

    Grayscale images are expanded to three channels and an alpha channel is dropped. Raises
    :class:`~cryptoface.errors.ImageError` for a missing or unreadable file, data that is not an image,
    or a truncated JPEG/PNG.
    """
    data, name = _read_bytes(source)
    if not data:
        raise ImageError(f"{name} is empty")
    if _looks_truncated(data):
        raise ImageError(f"{name} is truncated (the image data ends early); re-export or re-download it")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageError(f"{name} could not be decoded: {exc}") from exc
    if img is None or img.size == 0:
        raise ImageError(f"{name} is not an image OpenCV can read (expected JPEG or PNG)")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), dtype=np.uint8)
