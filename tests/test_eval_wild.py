"""The in-the-wild validation protocol: the identity split, its metrics and intervals, training's exclusion, CLI."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cryptoface.eval.wild import (
    VALIDATION_PERCENT,
    is_validation_identity,
    load_wild,
    pair_scores,
    summarize_wild,
    validation_rows,
)
from cryptoface.train.data import read_index

cv2 = pytest.importorskip("cv2")
SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-train"


def make_train_folder(root: Path, n_ids: int = 40, per_id: int = 3, unlabelled: int = 6) -> Path:
    """A faces-train folder of smooth random 112x112 crops: ``n_ids`` CelebA-style identities plus unlabelled."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rows = []
    with tarfile.open(root / "shard-0000.tar", "w") as tar:
        for i in range(n_ids * per_id + unlabelled):
            img = cv2.resize(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8), (112, 112))
            data = cv2.imencode(".jpg", img)[1].tobytes()
            name = f"synthetic/{i:06d}.jpg"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            ident = f"celeba:{i // per_id}" if i < n_ids * per_id else ""
            rows.append(["shard-0000.tar", name, ident, "celeba" if ident else "utk", name, "yunet5pt-arcface112"])
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shard", "member", "identity", "source", "orig_path", "aligned"])
        w.writerows(rows)
    return root


def test_split_is_a_fixed_share_of_celeba_identities_only() -> None:
    ids = [f"celeba:{i}" for i in range(2000)]
    held = [i for i in ids if is_validation_identity(i)]
    assert abs(len(held) / len(ids) - VALIDATION_PERCENT / 100) < 0.04
    assert held == [i for i in ids if is_validation_identity(i)]  # deterministic
    assert not any(is_validation_identity(x) for x in ("", "aaf:12", "utk:3", "celebaX:1", "CELEBA:1"))


def _synthetic_scores(n_ids: int = 30, per_id: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings with a known structure: identity centre + noise (genuine cosines high, impostors near 0)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 64))
    labels = np.repeat(np.arange(n_ids), per_id)
    return centres[labels] + 0.9 * rng.normal(size=(len(labels), 64)), labels


def test_pair_scores_cover_every_unordered_pair_once() -> None:
    emb, labels = _synthetic_scores(5, 4)
    scores, same, a, b = pair_scores(emb, labels)
    n = len(labels)
    assert len(scores) == n * (n - 1) // 2 and same.sum() == 5 * 6
    assert np.all(same == (a == b))
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert np.isclose(scores[0], e[0] @ e[1])


def test_thresholds_and_tar_match_a_direct_count_and_the_interval_holds_the_estimate() -> None:
    emb, labels = _synthetic_scores()
    scores, same, a, b = pair_scores(emb, labels)
    res = summarize_wild(scores, same, a, b, int(labels.max()) + 1, bootstrap=50)
    imp, gen = scores[~same], scores[same]
    for far in ("1e-2", "1e-3"):
        thr = res[f"threshold_at_far_{far}"]
        assert np.mean(imp > thr) <= float(far) + 1e-12  # the FAR is met...
        assert np.mean(imp >= thr) > float(far) - 2 / len(imp)  # ...by the smallest such threshold
        assert res[f"tar_at_far_{far}"] == pytest.approx(np.mean(gen > thr))
        lo, hi = res[f"tar_at_far_{far}_ci95"]
        assert lo <= res[f"tar_at_far_{far}"] <= hi and hi - lo > 0
    assert res["threshold_at_far_1e-3"] >= res["threshold_at_far_1e-2"]
    assert 0 <= res["eer"] < 0.5 and res["accuracy"] == pytest.approx(1 - res["eer"])
    assert summarize_wild(scores, same, a, b, int(labels.max()) + 1, bootstrap=0)["tar_at_far_1e-3_ci95"] is None


def test_paired_difference_shares_the_draws() -> None:
    """The same model against itself differs by exactly 0; a noisier one is worse, its paired interval excluding 0
    and narrower than the two unpaired intervals side by side."""
    from cryptoface.errors import DataError
    from cryptoface.eval.wild import paired_difference

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, 64))
    labels = np.repeat(np.arange(30), 10)
    noise = rng.normal(size=(300, 64))
    res = []
    for scale in (0.9, 1.3):
        scores, same, a, b = pair_scores(centres[labels] + scale * noise, labels)
        r = summarize_wild(scores, same, a, b, 30, bootstrap=100)
        r.update(n_identities=30, n_pairs=len(scores))
        res.append(r)
    zero = paired_difference(res[0], res[0])
    assert zero["tar_at_far_1e-3"] == 0 and zero["tar_at_far_1e-3_ci95"] == [0.0, 0.0]
    d = paired_difference(res[0], res[1])
    lo, hi = d["tar_at_far_1e-2_ci95"]
    assert d["tar_at_far_1e-2"] == pytest.approx(res[0]["tar_at_far_1e-2"] - res[1]["tar_at_far_1e-2"])
    assert 0 < lo <= d["tar_at_far_1e-2"] <= hi
    (a_lo, a_hi), (b_lo, b_hi) = res[0]["tar_at_far_1e-2_ci95"], res[1]["tar_at_far_1e-2_ci95"]
    assert hi - lo < (a_hi - a_lo) + (b_hi - b_lo)
    for bad in (dict(res[1], bootstrap_seed=1), dict(res[1], n_pairs=None),
                dict(res[1], bootstrap_tar={k: v[:50] for k, v in res[1]["bootstrap_tar"].items()})):
        with pytest.raises(DataError, match="same bootstrap"):
            paired_difference(res[0], bad)


def test_a_worse_model_scores_worse() -> None:
    """The protocol ranks: more noise around the same identities gives a higher EER and a lower TAR."""
    out = []
    for noise in (0.5, 1.5):
        rng = np.random.default_rng(3)
        centres = rng.normal(size=(30, 64))
        labels = np.repeat(np.arange(30), 10)
        scores, same, a, b = pair_scores(centres[labels] + noise * rng.normal(size=(300, 64)), labels)
        out.append(summarize_wild(scores, same, a, b, 30, bootstrap=0))
    assert out[0]["eer"] < out[1]["eer"] and out[0]["tar_at_far_1e-3"] > out[1]["tar_at_far_1e-3"]


def test_validation_crops_load_and_training_never_sees_them(tmp_path: Path) -> None:
    root = make_train_folder(tmp_path / "faces-train")
    index = read_index(root)
    rows = validation_rows(index)
    assert rows and all(is_validation_identity(index.identity[i]) for i in rows)
    wild = load_wild(root, progress=False)
    assert wild.crops.shape == (len(rows), 112, 112, 3) and len(wild.names) == len(set(wild.labels))
    assert np.bincount(wild.labels).tolist() == [3] * len(wild.names)  # every crop of each validation identity

    pytest.importorskip("torch", reason="training needs the 'train' extra (torch)")
    from cryptoface.train.config import load_config
    from cryptoface.train.train import prepare_data

    repo = Path(__file__).resolve().parents[1]
    over = [f"train_dir={root}", f"cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}"]
    data = prepare_data(load_config(repo / "configs" / "smoke.json", over))
    used = {index.identity[i] for i in np.concatenate([data.train_rows, data.val_rows])}
    assert not any(is_validation_identity(i) for i in used)
    assert data.report["wild_validation_crops"] == len(rows)
    data = prepare_data(load_config(repo / "configs" / "smoke.json", [*over, "exclude_wild=false"]))
    assert any(is_validation_identity(index.identity[i]) for i in data.train_rows)


def test_a_trained_model_gets_tau_for_the_far_on_the_left_out_identities(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="training needs the 'train' extra (torch)")
    from cryptoface.train.config import load_config
    from cryptoface.train.train import build_model, model_statistics, prepare_data, wild_metrics

    root = make_train_folder(tmp_path / "faces-train")
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs" / "smoke.json",
                      [f"train_dir={root}", f"cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}"])
    data = prepare_data(cfg)
    model, _ = build_model(cfg, data, torch.device("cpu"))
    stats = model_statistics(model.eval(), data, cfg.resolution)
    detail = stats["threshold"]
    assert detail["far"] == 1e-3 and detail["identities"] == len({i for i in map(str, range(40))
                                                                  if is_validation_identity(f"celeba:{i}")})
    assert detail["threshold"] == detail["thresholds"]["1e-3"] and len(detail["tar_ci95"]) == 2
    assert set(wild_metrics(model, data, cfg.resolution)) == {"wild_eer", "wild_tar_1e-3", "wild_tar_1e-2"}


def test_eval_wild_cli_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptoface.assets import default_model_path
    from cryptoface.cli import main

    root = make_train_folder(tmp_path / "faces-train")
    out = tmp_path / "wild.json"
    assert main(["eval", "wild", "--train-dir", str(root), "--compare", str(default_model_path()), "--quiet",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dataset"] == "wild" and report["n_identities"] >= 10
    assert report["n_pairs"] == report["n_genuine"] + report["n_impostor"]
    assert len(report["tar_at_far_1e-3_ci95"]) == 2 and report["compared"][0]["eer"] == report["eer"]
    text = capsys.readouterr().out
    assert "tau@1e-3" in text and "EER" in text
    # the same model twice: the paired difference is exactly 0 and stored beside the compared row
    assert report["compared"][0]["difference_of_model"]["tar_at_far_1e-3"] == 0
    assert "bootstrap_tar" not in report and "+0.00 [+0.00, +0.00]" in text


def test_eval_wild_refuses_a_folder_without_validation_identities(tmp_path: Path) -> None:
    from cryptoface.cli import main

    root = make_train_folder(tmp_path / "faces-train", n_ids=3)
    assert main(["eval", "wild", "--train-dir", str(root), "--quiet"]) == 2


@pytest.mark.skipif(not SHARED_TRAIN.is_dir(), reason="../shared/data/faces-train is not here")
def test_the_shared_split_has_enough_identities_for_an_interval() -> None:
    index = read_index(SHARED_TRAIN)
    rows = validation_rows(index)
    ids = {index.identity[i] for i in rows}
    assert len(ids) >= 80 and len(rows) >= 1500


def test_calibrate_writes_the_threshold_for_the_far_and_the_client_uses_it(tmp_path: Path) -> None:
    import shutil

    from cryptoface.assets import default_model_path
    from cryptoface.cli import main
    from cryptoface.eval.embedders import FusedEmbedder
    from cryptoface.eval.wild import evaluate_wild
    from cryptoface.match.threshold import threshold_from_model_file
    from cryptoface.model.file import read_header

    root = make_train_folder(tmp_path / "faces-train")
    model = tmp_path / "model.npz"
    shutil.copy(default_model_path(), model)
    assert main(["model", "calibrate", str(model), "--train-dir", str(root), "--far", "1e-2", "--quiet"]) == 0
    detail = read_header(model)["metadata"]["threshold_detail"]
    result = evaluate_wild(root, FusedEmbedder(model), progress=False)
    imp = result["scores"][~result["labels"]]
    assert threshold_from_model_file(model) == pytest.approx(result["threshold_at_far_1e-2"])
    assert detail["far"] == 1e-2 and np.mean(imp > detail["threshold"]) <= 1e-2
    assert set(detail["thresholds"]) == {"1e-3", "1e-2"} and detail["identities"] == result["n_identities"]


def test_calibrate_refuses_an_unreported_far_before_any_work(tmp_path: Path) -> None:
    import shutil

    from cryptoface.assets import default_model_path
    from cryptoface.cli import main

    model = tmp_path / "model.npz"
    shutil.copy(default_model_path(), model)
    before = model.read_bytes()
    missing = tmp_path / "no-such-folder"  # never read: the rate is checked first
    assert main(["model", "calibrate", str(model), "--train-dir", str(missing), "--far", "0.05", "--quiet"]) == 2
    assert model.read_bytes() == before
