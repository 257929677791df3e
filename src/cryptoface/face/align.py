"""Warp a face onto the ArcFace 112x112 template with a 5-point similarity transform."""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 112
# Right eye, left eye, nose tip, right and left mouth corners (ArcFace/InsightFace 112x112 template).
TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def _least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Closed-form least-squares similarity (rotation, uniform scale, translation) mapping src to dst."""
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - ms, dst - md
    denom = float((s**2).sum())
    a = float((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum()) / denom
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / denom
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (md - rot @ ms)[:, None]])


def similarity_matrix(landmarks: np.ndarray) -> np.ndarray:
    """2x3 similarity transform taking the 5 landmarks onto :data:`TEMPLATE` (LMEDS-robust fit)."""
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    m, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), TEMPLATE.astype(np.float32), method=cv2.LMEDS)
    if m is None or not np.all(np.isfinite(m)):
        m = _least_squares_similarity(src, TEMPLATE)
    return np.asarray(m, dtype=np.float64)


def warp_face(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Aligned 112x112 crop (bilinear, black outside the photo); channel order is kept (RGB in, RGB out)."""
    m = similarity_matrix(landmarks)
    crop = cv2.warpAffine(image, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR, borderValue=0)
    return np.ascontiguousarray(crop, dtype=np.uint8)
