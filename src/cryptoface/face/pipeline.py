"""Client-side face pipeline: photo -> aligned 112x112 RGB crop -> model input at the model resolution."""

from __future__ import annotations

import numpy as np

from cryptoface.errors import ImageError
from cryptoface.face.align import CROP_SIZE, warp_face
from cryptoface.face.detect import PRODUCT_MIN_SCORE, Face, detect_face
from cryptoface.face.image import ImageSource, load_image_file
from cryptoface.face.refine import refine_landmarks
from cryptoface.face.resize import to_model_input

# Bump when detection/alignment changes in a way that changes crops (invalidates cached LFW crops).
PIPELINE_VERSION = "yunet2023mar-refined2x2-arcface112-lmeds-v2"


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image array, got dtype {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) RGB image array, got shape {img.shape}")
    return np.ascontiguousarray(img)


def _is_aligned_crop(img: np.ndarray) -> bool:
    return img.shape[:2] == (CROP_SIZE, CROP_SIZE)


def align_face(
    image: ImageSource | np.ndarray,
    aligned: bool | None = None,
    select: str = "largest",
    min_score: float | None = PRODUCT_MIN_SCORE,
    refine: bool = True,
) -> np.ndarray:
    """112x112x3 RGB uint8 crop of the main face in a photo (path, bytes or RGB uint8 array).

    The main face is the largest one; ``select="center"`` keeps the one nearest the image centre instead
    (see :func:`cryptoface.face.detect.detect_face`). ``min_score`` is the detector score a face needs
    (default 0.6, what enrolment and verification accept; ``None`` = the lenient LFW research search).
    ``refine`` averages the landmarks over re-detections of the face in centred, mirrored views (see
    :mod:`cryptoface.face.refine`); ``refine=False`` gives the single-detection crop of pipeline v1.

    ``aligned=None`` treats a 112x112 input as an already aligned crop (as in the training shards) and
    returns it unchanged; pass ``aligned=False`` to run detection on such an image anyway. Raises
    ImageError, NoFaceError or FaceTooSmallError.
    """
    img = _as_rgb(image) if isinstance(image, np.ndarray) else load_image_file(image)
    if aligned or (aligned is None and _is_aligned_crop(img)):
        if not _is_aligned_crop(img):
            raise ImageError(f"an aligned crop must be {CROP_SIZE}x{CROP_SIZE}, got {img.shape[1]}x{img.shape[0]}")
        return img
    return detect_and_align(img, select=select, min_score=min_score, refine=refine)[1]


def detect_and_align(
    img: np.ndarray, select: str = "largest", min_score: float | None = PRODUCT_MIN_SCORE, refine: bool = True
) -> tuple[Face, np.ndarray]:
    """(the main face as detected, its 112x112x3 aligned crop) of an RGB uint8 photo; see :func:`align_face`."""
    face = detect_face(img, select=select, min_score=min_score)
    return face, warp_face(img, refine_landmarks(img, face) if refine else face.landmarks)


def preprocess(image: ImageSource | np.ndarray, resolution: int, aligned: bool | None = None) -> np.ndarray:
    """Model input (3, S, S) float64 of a photo or an aligned crop: :func:`align_face` then ``to_model_input``."""
    return to_model_input(align_face(image, aligned=aligned), resolution)
