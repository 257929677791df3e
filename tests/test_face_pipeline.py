"""Decode, detect and align the bundled sample faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import cryptoface
from cryptoface.errors import FaceTooSmallError, ImageError, ModelAssetError, NoFaceError
from cryptoface.face import align_face, load_image_file, preprocess
from cryptoface.face.align import TEMPLATE, similarity_matrix
from cryptoface.face.assets import sface_path, yunet_path
from cryptoface.face.detect import MAX_DETECT_SIDE, detect_face

FACE_FILES = ["obama3.jpg", "obama4.jpg", "chirac1.jpg", "chirac3.jpg", "paul_rudd_1.jpg", "paul_rudd_2.jpg"]


def test_assets_found():
    assert yunet_path().name == "face_detection_yunet_2023mar.onnx"
    assert sface_path().stat().st_size > 30_000_000


def test_asset_override_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("CRYPTOFACE_YUNET", str(tmp_path / "nope.onnx"))
    with pytest.raises(ModelAssetError, match="CRYPTOFACE_YUNET"):
        yunet_path()


def test_sample_copies_identical(faces_dir):
    from cryptoface.assets import SAMPLES_DIR

    for name in [*FACE_FILES, "coffee.jpg", "SOURCES.md"]:
        assert (faces_dir / name).read_bytes() == (SAMPLES_DIR / name).read_bytes(), name


def test_load_image_rgb_from_path_and_bytes(faces_dir):
    path = faces_dir / "obama3.jpg"
    img = load_image_file(path)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert np.array_equal(img, load_image_file(path.read_bytes()))
    bgr = cv2.imread(str(path))
    assert np.array_equal(img, bgr[:, :, ::-1])


def test_load_png_bytes():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    out = load_image_file(png.tobytes())
    assert out.shape == (10, 20, 3) and np.all(out[..., 0] == 255) and np.all(out[..., 1:] == 0)


@pytest.mark.parametrize(
    "data",
    [b"", b"this is not an image at all", bytes(range(256)) * 10],
    ids=["empty", "text", "garbage"],
)
def test_garbage_bytes_raise(data):
    with pytest.raises(ImageError):
        load_image_file(data)


def test_missing_and_truncated_files(tmp_path, faces_dir):
    with pytest.raises(ImageError, match="not found"):
        load_image_file(tmp_path / "missing.jpg")
    data = (faces_dir / "chirac1.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image_file(cut)
    with pytest.raises(ImageError):
        align_face(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)


@pytest.mark.parametrize("name", FACE_FILES)
def test_align_sample_faces(faces_dir, name):
    img = load_image_file(faces_dir / name)
    face = detect_face(img)
    assert face.score >= 0.5
    crop = align_face(faces_dir / name)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    # The landmarks, mapped by the alignment, land near the template. LMEDS fits a similarity to the best
    # subset of the 5 points, so on a tilted or turned face one eye may sit a few px off its template point;
    # 8 px is under a quarter of the template's 35 px eye distance.
    m = similarity_matrix(face.landmarks)
    mapped = face.landmarks @ m[:, :2].T + m[:, 2]
    assert np.all(np.linalg.norm(mapped[:2] - TEMPLATE[:2], axis=1) < 8.0)
    assert np.linalg.norm(mapped[:2].mean(axis=0) - TEMPLATE[:2].mean(axis=0)) < 4.0
    # ... and detecting again in the warped crop finds the eyes near the template points too.
    again = detect_face(np.ascontiguousarray(cv2.resize(crop, (224, 224))), min_eye_distance=0)
    assert np.all(np.linalg.norm((again.landmarks[:2] + 0.5) / 2 - 0.5 - TEMPLATE[:2], axis=1) < 8.0)


def test_largest_face_is_kept(faces_dir):
    # chirac3.jpg shows Chirac in front of a crowd: several faces, his is the largest.
    from cryptoface.face.detect import detect_faces

    img = load_image_file(faces_dir / "chirac3.jpg")
    faces = detect_faces(img)
    assert len(faces) > 1
    assert detect_face(img).area == max(f.area for f in faces)


def test_select_center_or_largest(faces_dir):
    big = load_image_file(faces_dir / "obama3.jpg")  # 275x400
    small = cv2.resize(load_image_file(faces_dir / "paul_rudd_1.jpg"), (142, 200), interpolation=cv2.INTER_AREA)
    canvas = np.full((400, 700, 3), 128, np.uint8)
    canvas[:, :275] = big  # large face on the left
    canvas[100:300, 279:421] = small  # smaller face in the middle
    largest = detect_face(canvas)
    central = detect_face(canvas, select="center")
    assert largest.center[0] < 275 < central.center[0] < 421
    assert largest.area > central.area
    assert not np.array_equal(align_face(canvas), align_face(canvas, select="center"))
    with pytest.raises(ValueError, match="select"):
        detect_face(canvas, select="first")


def test_large_image_is_downscaled_for_detection(faces_dir):
    img = load_image_file(faces_dir / "obama3.jpg")
    big = cv2.resize(img, (img.shape[1] * 4, img.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    assert max(big.shape[:2]) > MAX_DETECT_SIDE
    s = MAX_DETECT_SIDE / max(big.shape[:2])
    shrunk = cv2.resize(big, (round(big.shape[1] * s), round(big.shape[0] * s)), interpolation=cv2.INTER_AREA)
    on_shrunk, on_big = detect_face(shrunk), detect_face(big)
    # Same detection, landmarks mapped back into the big image's pixels.
    assert np.allclose(on_big.landmarks, (on_shrunk.landmarks + 0.5) / s - 0.5, atol=1e-3)
    assert on_big.box[2] == pytest.approx(on_shrunk.box[2] / s)
    assert align_face(big).shape == (112, 112, 3)


def test_no_face_in_blank_or_noise():
    with pytest.raises(NoFaceError):
        align_face(np.full((240, 320, 3), 200, np.uint8))
    rng = np.random.default_rng(1)
    with pytest.raises(NoFaceError):
        align_face(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), aligned=False)


def test_coffee_has_no_face(faces_dir):
    with pytest.raises(NoFaceError):
        align_face(faces_dir / "coffee.jpg")


def test_lenient_research_search_still_finds_the_cup(faces_dir):
    # The LFW protocol's 0.5-then-0.2 search is kept for reproducing research numbers only; it is why the
    # product path demands a confident face (PRODUCT_MIN_SCORE).
    crop = align_face(faces_dir / "coffee.jpg", min_score=None)
    assert crop.shape == (112, 112, 3)


def test_tiny_face_too_small(faces_dir):
    img = load_image_file(faces_dir / "obama3.jpg")
    tiny = cv2.resize(img, (32, 46), interpolation=cv2.INTER_AREA)
    canvas = np.full((200, 200, 3), 128, np.uint8)
    canvas[50:96, 50:82] = tiny
    with pytest.raises(FaceTooSmallError, match="too small"):
        align_face(canvas)


def test_aligned_crop_passes_through():
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert align_face(crop) is not None and np.array_equal(align_face(crop), crop)
    x = preprocess(crop, 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float64
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_flat_exports():
    assert cryptoface.align_face is align_face
    assert cryptoface.preprocess is preprocess
    assert cryptoface.load_image_file is load_image_file
