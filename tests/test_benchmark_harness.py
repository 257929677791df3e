"""CryptoFace as a submission to the HE benchmark's face-verification harness (benchmark/).

The end-to-end test runs the harness copy in ../shared/benchmark/face-recognition-harness on a few LFW pairs
with the simulator backend at the default parameters (benchmark/run.py assembles the checkout), checks its
verdict and output files, then runs the server stages again with the client's secret key home and clear work
folder moved away. The other tests need only h5py and the bundled test photos.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FACES, REPO, shared_dir

h5py = pytest.importorskip("h5py", reason="h5py is not installed (pip install h5py; it is in the dev extra)")

BENCH = REPO / "benchmark"
HARNESS = shared_dir() / "benchmark" / "face-recognition-harness"
LFW = shared_dir() / "data" / "lfw"
SERVER_STAGES = ("server_preprocess_model", "server_encrypted_compute")


@pytest.fixture(scope="module")
def cfsub():
    """The benchmark's stage library (benchmark/cfsubmission), importable for the duration of the module."""
    sys.path.insert(0, str(BENCH))
    try:
        import cfsubmission.client
        import cfsubmission.dataset

        yield cfsubmission
    finally:
        sys.path.remove(str(BENCH))


def write_csv(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["image1,image2,same", *(f"{a},{b},{s}" for a, b, s in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_balanced_order_alternates_classes_and_folds(cfsub) -> None:
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], dtype=bool)
    fold = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    order = cfsub.dataset.balanced_order(same, fold)
    assert order.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]  # round 0: fold 0 g, i; fold 1 g, i; then round 1
    assert cfsub.dataset.balanced_order(np.array([1, 1, 1, 0], bool), np.zeros(4)).tolist() == [0, 3, 1, 2]


def test_dataset_from_csv_has_the_harness_format(cfsub, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "pairs.csv", [
        (str(FACES / "obama3.jpg"), str(FACES / "obama4.jpg"), 1),
        (str(FACES / "chirac1.jpg"), str(FACES / "chirac3.jpg"), 1),
        (str(FACES / "obama3.jpg"), str(FACES / "chirac1.jpg"), 0),
        (str(FACES / "paul_rudd_1.jpg"), str(FACES / "obama4.jpg"), 0),
        (str(FACES / "paul_rudd_1.jpg"), str(FACES / "paul_rudd_2.jpg"), 1),
    ])
    out = tmp_path / "datasets" / "face_dataset.h5"
    report = cfsub.dataset.build_dataset(out, csv=csv, limit=4)
    assert (report.pairs, report.genuine, report.impostor) == (4, 2, 2)
    with h5py.File(out, "r") as store:
        assert int(store.attrs["schema_version"]) == 1
        assert store["labels"].dtype == np.int8
        assert store["labels"][:].tolist() == [1, 0, 1, 0]
        assert bytes(store["image0"][1]) == (FACES / "obama3.jpg").read_bytes()  # the file's bytes, unchanged
        assert store["image1"].dtype == h5py.vlen_dtype(np.dtype("uint8"))
    if (HARNESS / "harness" / "face_dataset_store.py").is_file():  # the harness's own validator accepts it
        sys.path.insert(0, str(HARNESS / "harness"))
        try:
            from face_dataset_store import validate_pair_store

            assert validate_pair_store(out) == (4, 2)
        finally:
            sys.path.remove(str(HARNESS / "harness"))
    with pytest.raises(Exception, match="exceeds"):
        cfsub.dataset.build_dataset(out, csv=csv, limit=6)


def test_photo_without_a_face_is_scored_on_a_flagged_centre_crop(cfsub, tmp_path: Path) -> None:
    """A blank photo: even the lenient LFW face search (which finds a "face" on the coffee cup) finds none."""
    import cv2

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((180, 240, 3), 128, dtype=np.uint8))
    csv = write_csv(tmp_path / "pairs.csv", [(str(FACES / "obama3.jpg"), str(blank), 0),
                                             (str(FACES / "obama3.jpg"), str(FACES / "obama4.jpg"), 1)])
    store = tmp_path / "test_pairs.h5"
    cfsub.dataset.build_dataset(store, csv=csv)
    work = tmp_path / "client_work"
    report = cfsub.client.preprocess_pairs(store, 64, work)  # the store holds the genuine pair first
    assert report.pairs == 2 and report.flagged_pairs == [1]
    assert report.flagged[0].side == 1 and report.flagged[0].reason.startswith("NoFaceError")
    side = json.loads((work / "flagged_pairs.json").read_text())
    assert side["pairs"] == [1] and side["policy"] == "centre-crop"
    x = np.load(work / "inputs" / "pair-00001.npy")
    assert x.shape == (2, 3, 64, 64) and np.isfinite(x).all()
    assert (work.stat().st_mode & 0o077) == 0  # clear inputs stay private to the client


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRYPTOFACE_BENCH_", "CRYPTOFACE_ARTIFACT"))}
    env.update(CRYPTOFACE_BENCH_BACKEND="simulator", FACE_LARGE_PAIRS="4")
    return env


def _stage(work: Path, name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, f"submission/{name}.py", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.shared
def test_harness_end_to_end_on_the_simulator(tmp_path: Path) -> None:
    """The harness scores 4 LFW pairs (size 3 with FACE_LARGE_PAIRS=4); then the server stages run again with the
    client's secret key home and clear work folder gone, and the client decrypts the same scores."""
    if not (HARNESS / "harness" / "run_submission.py").is_file():
        pytest.skip(f"the harness copy is absent ({HARNESS}); it lives in ../shared/benchmark")
    if not (LFW / "pairs.txt").is_file():
        pytest.skip(f"LFW pairs are absent ({LFW}); they live in ../shared/data/lfw")
    pytest.importorskip("PIL", reason="the harness decodes images with Pillow")
    work = tmp_path / "checkout"
    env = _env()
    run = subprocess.run([sys.executable, str(BENCH / "run.py"), "3", "--backend", "simulator", "--work", str(work),
                          "--python", sys.executable, "--harness", str(HARNESS), "--lfw-dir", str(LFW)],
                         env=env, capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "acceptance=PASS" in log and "All steps completed" in log, log[-4000:]

    io = work / "io" / "large"
    predictions = io / "encrypted_model_predictions.txt"
    scores = [float(v) for v in predictions.read_text().split()]
    assert len(scores) == 4 and all(math.isfinite(s) and -1.01 < s < 1.01 for s in scores)
    labels = [int(v) for v in (work / "datasets" / "large" / "intermediate" / "test_labels.txt").read_text().split()]
    assert sorted(labels) == [0, 0, 1, 1]  # the builder's balanced first 4 pairs, all sampled
    result = json.loads((work / "measurements" / "large" / "results-1.json").read_text())
    assert set(result["Bandwidth"]) >= {"Public and evaluation keys", "Packed model weights", "Encrypted input",
                                        "Encrypted results"}
    assert result["Quality"]["Comparison to ArcFace baseline"]["passed"] is True
    assert "Encrypted computation" in result["Server Reported"]
    assert not (io / "public_keys" / "secret.key").exists()

    # the server stages again, with nothing of the client's but the public keys and the uploaded ciphertexts
    away = tmp_path / "client-elsewhere"
    away.mkdir()
    for name in ("client_secret_keys", "client_work"):
        shutil.move(io / name, away / name)
    shutil.rmtree(io / "ciphertexts_download")
    shutil.rmtree(work / "io" / "server_data")
    for stage in SERVER_STAGES:
        args = () if stage == "server_preprocess_model" else ("3",)
        done = _stage(work, stage, env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    assert any((io / "ciphertexts_download").glob("scores-*.cfct"))

    # the client decrypts what the key-less server computed: the same scores
    for name in ("client_secret_keys", "client_work"):
        shutil.move(away / name, io / name)
    predictions.unlink()
    for stage in ("client_decrypt_decode", "client_postprocess"):
        done = _stage(work, stage, env, "3")
        assert done.returncode == 0, done.stdout + done.stderr
    assert [float(v) for v in predictions.read_text().split()] == scores

    # a public key folder that holds a secret key is refused by the server in one line
    shutil.copy(io / "client_secret_keys" / "secret.key", io / "public_keys" / "secret.key")
    done = _stage(work, "server_encrypted_compute", env, "3")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "secret key" in done.stderr, done.stderr
