"""Photos the user gave the web app: decoded, the face detected and aligned, before anything is encrypted.

They stay in this process's memory (never on disk, never sent: only their encryption leaves), at most
:data:`MAX_PHOTOS` of them for at most :data:`KEEP_SECONDS`; the oldest go first.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from cryptoface.errors import ImageError
from cryptoface.face import detect_and_align, load_image_file
from cryptoface.face.detect import Face

MAX_PHOTOS = 32
KEEP_SECONDS = 3600.0
MAX_PHOTO_BYTES = 20 * 1024 * 1024
PREVIEW_SIDE = 480  # the preview's longer side in pixels


@dataclass(frozen=True)
class Photo:
    """A decoded photo, its main face and the aligned crop that would be encrypted."""

    photo_id: str
    name: str
    image: np.ndarray  # H x W x 3 RGB uint8
    face: Face
    crop: np.ndarray  # 112 x 112 x 3 RGB uint8
    align_seconds: float
    created: float = field(default_factory=time.time)

    def preview_png(self) -> bytes:
        """The photo, scaled to fit :data:`PREVIEW_SIDE`, with the detected box and landmarks drawn."""
        scale = min(1.0, PREVIEW_SIDE / max(self.image.shape[:2]))
        img = cv2.resize(self.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else \
            self.image.copy()
        x, y, w, h = (int(np.rint(v * scale)) for v in self.face.box)
        thick = max(2, round(max(img.shape[:2]) / 200))
        cv2.rectangle(img, (x, y), (x + w, y + h), (0, 200, 80), thick)
        for px, py in self.face.landmarks * scale:
            cv2.circle(img, (int(np.rint(px)), int(np.rint(py))), thick + 1, (255, 200, 0), -1)
        return _png(img)

    def crop_png(self) -> bytes:
        return _png(cv2.resize(self.crop, (224, 224), interpolation=cv2.INTER_NEAREST))


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError("the preview could not be encoded")
    return buf.tobytes()


def read_photo(data: bytes, name: str) -> Photo:
    """Decode and align a photo (ImageError, NoFaceError, FaceTooSmallError as the detector says)."""
    if not data:
        raise ImageError("the upload is empty: choose a photo file or capture one with the camera")
    if len(data) > MAX_PHOTO_BYTES:
        raise ImageError(f"the photo is {len(data) / 1e6:.1f} MB; at most {MAX_PHOTO_BYTES // 1024**2} MB")
    t0 = time.perf_counter()
    image = load_image_file(data)
    face, crop = detect_and_align(image)
    return Photo(secrets.token_urlsafe(12), name[:200], image, face, crop, time.perf_counter() - t0)


class PhotoShelf:
    """The photos of this app session by id."""

    def __init__(self) -> None:
        self._photos: dict[str, Photo] = {}
        self._lock = threading.Lock()

    def add(self, photo: Photo) -> Photo:
        with self._lock:
            now = time.time()
            for pid in [p for p, ph in self._photos.items() if now - ph.created > KEEP_SECONDS]:
                del self._photos[pid]
            while len(self._photos) >= MAX_PHOTOS:
                del self._photos[min(self._photos, key=lambda p: self._photos[p].created)]
            self._photos[photo.photo_id] = photo
        return photo

    def get(self, photo_id: str) -> Photo | None:
        with self._lock:
            return self._photos.get(photo_id)

    def discard(self, photo_id: str) -> None:
        with self._lock:
            self._photos.pop(photo_id, None)


__all__ = ["MAX_PHOTO_BYTES", "Photo", "PhotoShelf", "read_photo"]
