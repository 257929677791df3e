"""`eval pairs` on photos without a face: failure to acquire (ISO/IEC 19795-1), centre-crop fallback, abort.

Real sample faces (src/cryptoface/assets/samples) plus generated photos without a face, scored by the
clear-text numpy embedder on a small random fused model.
"""

from __future__ import annotations

import argparse
import csv
import json
import math

import cv2
import numpy as np
import pytest

from cryptoface.assets import SAMPLES_DIR
from cryptoface.cli import eval_cmd
from cryptoface.errors import DataError
from cryptoface.eval.embedders import FusedEmbedder
from cryptoface.eval.pairs import NO_FACE_POLICIES, PhotoError, check_policy, evaluate_pairs
from cryptoface.eval.report import build_report, format_summary
from cryptoface.face.align import CROP_SIZE
from cryptoface.face.fallback import centre_crop

FACE_PAIRS = [
    ("imgs/obama3.jpg", "imgs/obama4.jpg", 1),
    ("imgs/chirac1.jpg", "imgs/chirac3.jpg", 1),
    ("imgs/paul_rudd_1.jpg", "imgs/paul_rudd_2.jpg", 1),
    ("imgs/obama3.jpg", "imgs/chirac1.jpg", 0),
    ("imgs/obama4.jpg", "imgs/paul_rudd_2.jpg", 0),
    ("imgs/chirac3.jpg", "imgs/paul_rudd_1.jpg", 0),
]
# Two pairs that use the faceless photo, inserted after the second face pair (CSV rows 2 and 3).
GREY_PAIRS = [("grey.png", "imgs/obama4.jpg", 0), ("imgs/chirac1.jpg", "grey.png", 1)]
WITH_GREY = [*FACE_PAIRS[:2], *GREY_PAIRS, *FACE_PAIRS[2:]]
GREY_ROWS = (2, 3)


def write_pairs(path, rows) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image1", "image2", "same"])
        w.writerows(rows)


def run_cli(argv: list[str]) -> int:
    """Parse with only the eval command registered, as tests/test_eval_cli.py does."""
    parser = argparse.ArgumentParser(prog="cryptoface")
    eval_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from cryptoface.model.file import save_model
    from cryptoface.model.random import random_model

    return save_model(random_model(64, seed=1), tmp_path_factory.mktemp("model") / "net4.npz")


@pytest.fixture(scope="module")
def embedder(model_path):
    return FusedEmbedder(model_path)


@pytest.fixture
def folder(tmp_path):
    """The sample faces as ``imgs/``, a flat grey photo and a file that is not an image."""
    (tmp_path / "imgs").symlink_to(SAMPLES_DIR)
    assert cv2.imwrite(str(tmp_path / "grey.png"), np.full((240, 320, 3), 128, np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"this is not a JPEG")
    return tmp_path


def evaluate(folder, rows, embedder, name="pairs.csv", **kw):
    write_pairs(folder / name, rows)
    return evaluate_pairs(folder / name, embedder, **kw)


def test_skip_counts_fta_and_scores_the_rest_unchanged(folder, embedder):
    base = evaluate(folder, FACE_PAIRS, embedder, "faces.csv")
    res = evaluate(folder, WITH_GREY, embedder)
    assert res["no_face_policy"] == "skip" and "centre_crop" not in res
    fta = res["failure_to_acquire"]
    assert (fta.photos, fta.photos_total, fta.pairs_unscored, fta.pairs_total) == (1, 7, 2, 8)
    assert fta.photo_rate == pytest.approx(1 / 7) and fta.pairs_unscored_rate == pytest.approx(2 / 8)
    assert fta.by_error == {"NoFaceError": 1}
    assert [(e.path, e.error) for e in fta.examples] == [("grey.png", "NoFaceError")]
    # Metrics over the 6 scored pairs, identical to the run without the faceless photo.
    assert res["n_pairs"] == 6 and res["n_pairs_total"] == 8
    assert [res["pair_scores"][i] for i in GREY_ROWS] == [None, None]
    scored = [s for i, s in enumerate(res["pair_scores"]) if i not in GREY_ROWS]
    np.testing.assert_allclose(scored, base["pair_scores"], rtol=0, atol=1e-12)
    for key in ("accuracy", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "eer_threshold"):
        assert res[key] == pytest.approx(base[key], abs=1e-12)
    fta0 = base["failure_to_acquire"]
    assert (fta0.photos, fta0.pairs_unscored, fta0.photo_rate, fta0.examples) == (0, 0, 0.0, [])


def test_unreadable_photo_is_fta_with_its_class(folder, embedder):
    rows = [*FACE_PAIRS, ("broken.jpg", "imgs/obama3.jpg", 0), *GREY_PAIRS]
    for policy, n_fta in (("skip", 2), ("centre-crop", 1)):
        fta = evaluate(folder, rows, embedder, no_face=policy)["failure_to_acquire"]
        assert fta.photos == n_fta and fta.policy == policy
        assert fta.examples[0] == PhotoError("broken.jpg", "ImageError", fta.examples[0].message)
        assert "not an image" in fta.examples[0].message
        assert fta.by_error["ImageError"] == 1
    with pytest.raises(DataError, match=r"broken\.jpg"):
        evaluate(folder, rows, embedder, no_face="error")


def test_centre_crop_scores_and_flags_pairs(folder, embedder):
    base = evaluate(folder, FACE_PAIRS, embedder, "faces.csv")
    res = evaluate(folder, WITH_GREY, embedder, no_face="centre-crop")
    assert res["n_pairs"] == res["n_pairs_total"] == 8 and res["failure_to_acquire"].photos == 0
    crop = res["centre_crop"]
    assert (crop.photos, crop.pairs) == (1, 2)
    assert [(e.path, e.error) for e in crop.images] == [("grey.png", "NoFaceError")]
    assert [(f.index, f.image1, f.image2) for f in crop.flagged_pairs] == [
        (2, "grey.png", "imgs/obama4.jpg"),
        (3, "imgs/chirac1.jpg", "grey.png"),
    ]
    assert all(math.isfinite(res["pair_scores"][i]) for i in GREY_ROWS)
    scored = [s for i, s in enumerate(res["pair_scores"]) if i not in GREY_ROWS]
    np.testing.assert_allclose(scored, base["pair_scores"], rtol=0, atol=1e-9)


def test_error_policy_aborts(folder, embedder):
    with pytest.raises(DataError, match=r"grey\.png.*no face"):
        evaluate(folder, WITH_GREY, embedder, no_face="error")
    assert evaluate(folder, FACE_PAIRS, embedder, no_face="error")["n_pairs"] == 6


def test_cli_text_and_json(folder, model_path, capsys):
    write_pairs(folder / "pairs.csv", WITH_GREY)
    out = folder / "out.json"
    argv = ["eval", "pairs", "--csv", str(folder / "pairs.csv"), "--model", str(model_path), "--json", str(out)]
    assert run_cli(argv) == 0
    text = capsys.readouterr().out
    assert "6 of 8 pairs scored" in text and "FTA, no-face policy skip): 1 of 7 photos (14.29 %)" in text
    assert "2 of 8 pairs unscored" in text and "NoFaceError: grey.png" in text
    report = json.loads(out.read_text())
    assert report["n_pairs"] == 6 and report["no_face_policy"] == "skip"
    fta = report["failure_to_acquire"]
    assert (fta["photos"], fta["pairs_unscored"]) == (1, 2) and fta["examples"][0]["error"] == "NoFaceError"
    assert report["pair_scores"][2] is None and report["pair_scores"][3] is None

    assert run_cli([*argv, "--no-face", "centre-crop"]) == 0
    text = capsys.readouterr().out
    assert "8 pairs" in text and "1 photo without a detected face" in text and "2 pairs flagged" in text
    report = json.loads(out.read_text())
    assert [p["index"] for p in report["centre_crop"]["flagged_pairs"]] == [2, 3]

    with pytest.raises(DataError, match=r"grey\.png"):
        run_cli([*argv, "--no-face", "error"])
    with pytest.raises(SystemExit):
        run_cli([*argv, "--no-face", "guess"])


def test_what_is_not_fta(folder, embedder):
    with pytest.raises(DataError, match="do not exist"):
        evaluate(folder, [*FACE_PAIRS, ("imgs/nobody.jpg", "imgs/obama3.jpg", 0)], embedder)
    # Every impostor pair lost to FTA: no metric can be computed.
    with pytest.raises(DataError, match="scored pair"):
        evaluate(folder, [FACE_PAIRS[0], ("grey.png", "imgs/obama3.jpg", 0)], embedder)
    with pytest.raises(DataError, match="no pair could be scored"):
        evaluate(folder, [("grey.png", "broken.jpg", 1), ("broken.jpg", "grey.png", 0)], embedder)
    with pytest.raises(DataError, match="no-face policy"):
        check_policy("centre")
    assert NO_FACE_POLICIES == ("skip", "centre-crop", "error")


def test_centre_crop_helper():
    img = np.zeros((200, 300, 3), np.uint8)
    img[50:150, 100:200] = 255  # the central square of side half the short side
    crop = centre_crop(img)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    assert crop.min() == 255
    assert centre_crop(img, fraction=1.0).min() == 0


def test_summary_of_a_report_without_fta_lines():
    """Reports of other evaluations (no failure_to_acquire key) print no FTA line."""
    result = {"accuracy": 1.0, "accuracy_std": None, "eer": 0.0, "tar_at_far_1e-2": 1.0, "tar_at_far_1e-3": 1.0,
              "n_pairs": 4}
    assert "failure to acquire" not in format_summary(build_report(result, "m", 64))
