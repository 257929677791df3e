"""Find the main face of a photo with OpenCV's YuNet detector.

YuNet takes a BGR uint8 image and returns, per face, a box (x, y, w, h), five landmarks in the order
right eye, left eye, nose tip, right mouth corner, left mouth corner (the subject's right/left, i.e.
image left first), and a score. Faces are searched at score >= 0.5 first and, when none is found, again
at >= 0.2. By default the face with the largest box area is kept (a user photo); ``select="center"``
keeps the face whose box centre is nearest the image centre instead, the rule of the LFW protocol (LFW
photos are centred on their subject, who is not always the largest face: on the 6,000 pairs, SFace
scores 98.90 % with "largest" and 99.25 % with "center").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cryptoface.errors import FaceTooSmallError, ImageError, NoFaceError
from cryptoface.face.assets import yunet_path

SCORE_THRESHOLD = 0.5
RETRY_SCORE_THRESHOLD = 0.2
# What enrolment and verification accept: real faces in the bundled samples score >= 0.72, while a
# coffee cup (skimage's coffee.png) reaches 0.35-0.53, so the lenient 0.5-then-0.2 search of the LFW
# research protocol would enrol a cup. A product must rather say "no face".
PRODUCT_MIN_SCORE = 0.6
NMS_THRESHOLD = 0.3
TOP_K = 5000
# Photos whose long side exceeds this are downscaled for detection only; landmarks are mapped back.
MAX_DETECT_SIDE = 1280
# Smallest accepted distance between the two eye landmarks, in pixels of the input photo. The ArcFace
# template puts the eyes 35.2 px apart in the 112x112 crop, so below 10 px the crop would be a >3.5x
# upscale of a face too blurry to recognise reliably.
MIN_EYE_DISTANCE = 10.0
SELECTIONS = ("largest", "center")


@dataclass(frozen=True)
class Face:
    """One detected face in the coordinates of the input photo."""

    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: np.ndarray  # (5, 2) float64: right eye, left eye, nose, right mouth, left mouth
    score: float

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    @property
    def center(self) -> np.ndarray:
        return np.array([self.box[0] + self.box[2] / 2.0, self.box[1] + self.box[3] / 2.0])

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[0] - self.landmarks[1]))


_lock = threading.Lock()
_detectors: dict[str, cv2.FaceDetectorYN] = {}


def _detector(path: Path) -> cv2.FaceDetectorYN:
    """One YuNet object per model path and process (created at the retry threshold; see detect_faces)."""
    key = str(path)
    det = _detectors.get(key)
    if det is None:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # OpenCV 5 warns about DNN targets
        try:
            det = cv2.FaceDetectorYN.create(key, "", (320, 320), RETRY_SCORE_THRESHOLD, NMS_THRESHOLD, TOP_K)
        finally:
            cv2.utils.logging.setLogLevel(level)
        _detectors[key] = det
    return det


def _as_bgr(image_rgb: np.ndarray) -> np.ndarray:
    img = np.asarray(image_rgb)
    if img.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image, got dtype {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ImageError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    return cv2.cvtColor(img, cv2.COLOR_RGBA2BGR if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)


def detect_faces(image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
    """All faces YuNet finds at score >= ``min_score``; with ``min_score=None`` (the LFW research
    protocol) at score >= 0.5, or, when there are none, at score >= 0.2.

    Greedy NMS never lets a lower-scoring box suppress a higher one, so one pass at the retry
    threshold followed by filtering gives exactly the faces of two passes at 0.5 and 0.2.
    """
    bgr = _as_bgr(image_rgb)
    h, w = bgr.shape[:2]
    if min(h, w) < 1:
        raise ImageError(f"image has no pixels (shape {bgr.shape})")
    scale = 1.0
    if max(h, w) > MAX_DETECT_SIDE:
        scale = MAX_DETECT_SIDE / max(h, w)
        bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    dh, dw = bgr.shape[:2]
    with _lock:
        det = _detector(yunet_path())
        det.setInputSize((dw, dh))
        _, rows = det.detect(bgr)
    if rows is None or len(rows) == 0:
        return []
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 15)
    if min_score is not None:
        rows = rows[rows[:, 14] >= min_score]
    else:
        strong = rows[rows[:, 14] >= SCORE_THRESHOLD]
        rows = strong if len(strong) else rows[rows[:, 14] >= RETRY_SCORE_THRESHOLD]
    # Map back to the input photo: a pixel centre u in the resized image sits at (u + 0.5) / s - 0.5.
    faces = []
    for r in rows:
        x, y, bw, bh = r[:4]
        lm = r[4:14].reshape(5, 2)
        if scale != 1.0:
            x, y, bw, bh = (x + 0.5) / scale - 0.5, (y + 0.5) / scale - 0.5, bw / scale, bh / scale
            lm = (lm + 0.5) / scale - 0.5
        faces.append(Face(box=(float(x), float(y), float(bw), float(bh)), landmarks=lm.copy(), score=float(r[14])))
    return faces


def detect_face(
    image_rgb: np.ndarray,
    min_eye_distance: float = MIN_EYE_DISTANCE,
    select: str = "largest",
    min_score: float | None = PRODUCT_MIN_SCORE,
) -> Face:
    """The main face of an RGB uint8 photo: the largest box (``select="largest"``) or the box whose centre
    is nearest the image centre (``select="center"``).

    ``min_score`` is the detector score a face needs (see :func:`detect_faces`; ``None`` = the lenient LFW
    research search). Raises :class:`NoFaceError` when YuNet finds none and :class:`FaceTooSmallError` when the kept
    face's eyes are closer than ``min_eye_distance`` pixels.
    """
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    faces = detect_faces(image_rgb, min_score)
    if not faces:
        raise NoFaceError("no face found in the image; use a photo with one clearly visible, roughly frontal face")
    if select == "largest":
        face = max(faces, key=lambda f: f.area)
    else:
        h, w = np.asarray(image_rgb).shape[:2]
        middle = np.array([w / 2.0, h / 2.0])
        face = min(faces, key=lambda f: float(np.linalg.norm(f.center - middle)))
    if face.eye_distance < min_eye_distance:
        raise FaceTooSmallError(
            f"the face is too small: its eyes are {face.eye_distance:.1f} px apart, at least {min_eye_distance:g} px "
            "are needed; use a larger or closer photo of the face"
        )
    return face
