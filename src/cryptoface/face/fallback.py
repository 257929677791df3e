"""Fallback crop for a photo in which no face is detected: a square of the image centre at the aligned size.

The geometry is the one ``eval lfw`` uses for its fallback (the central half of the short side), so a
centre crop means the same thing in both evaluations. It is not an aligned face: scores of pairs that use
one are flagged by the callers.
"""

from __future__ import annotations

import cv2
import numpy as np

from cryptoface.errors import ImageError
from cryptoface.face.align import CROP_SIZE

# Side of the square, as a fraction of the photo's short side.
CENTRE_FRACTION = 0.5


def centre_crop(image: np.ndarray, fraction: float = CENTRE_FRACTION) -> np.ndarray:
    """CROP_SIZE x CROP_SIZE crop of the central square (side ``fraction`` of the short side), channels kept."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    img = np.asarray(image)
    if img.ndim != 3 or img.dtype != np.uint8 or min(img.shape[:2]) == 0:
        raise ImageError(f"expected a non-empty (H, W, C) uint8 image array, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    side = max(1, int(min(h, w) * fraction))
    y0, x0 = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(img[y0 : y0 + side, x0 : x0 + side])
    crop = cv2.resize(square, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop, dtype=np.uint8)
