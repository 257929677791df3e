"""Smoke run of `cryptoface train` on generated data: 1 epoch, checkpoint, resume, export, load."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the 'train' extra (torch)")
cv2 = pytest.importorskip("cv2")

REPO = Path(__file__).resolve().parents[1]
N_CROPS = 64


def make_faces_train(root: Path, n: int = N_CROPS) -> Path:
    """A tiny faces-train folder: one tar shard of smooth random 112x112 JPEG crops + index.csv."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    with tarfile.open(root / "shard-0000.tar", "w") as tar:
        for i in range(n):
            small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
            img = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)
            ok, buf = cv2.imencode(".jpg", img)
            assert ok
            data = buf.tobytes()
            name = f"synthetic/{i:06d}.jpg"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            ident = f"celeba:{i % 8}" if i < 48 else ""
            rows.append(["shard-0000.tar", name, ident, "synthetic", name, "yunet5pt-arcface112"])
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shard", "member", "identity", "source", "orig_path", "aligned"])
        w.writerows(rows)
    return root


def test_train_smoke_checkpoint_resume_export(tmp_path: Path) -> None:
    from cryptoface.cli import main
    from cryptoface.model.file import load_model
    from cryptoface.model.reference import forward

    data = make_faces_train(tmp_path / "faces-train")
    out = tmp_path / "run"
    common = [
        "--config",
        str(REPO / "configs" / "smoke.json"),
        "--set",
        f"train_dir={data}",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--set",
        f"out_dir={out}",
    ]
    assert main(["train", *common]) == 0
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["step"] > 0
    first = load_model(out / "smoke.npz")
    # resume: a second epoch continues from the checkpoint (step count keeps growing)
    assert main(["train", *common, "--set", "epochs=2", "--resume"]) == 0
    ckpt2 = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt2["epoch"] == 2 and ckpt2["step"] == 2 * ckpt["step"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    model = load_model(out / "smoke.npz")
    assert model.architecture == "CryptoFaceNet4" and first.architecture == model.architecture
    meta = model.metadata
    assert meta["training"]["config"]["teacher"] == "random"
    assert np.isfinite(meta["norm_stats"]["mean"]) and meta["threshold"] is not None
    emb = forward(model, np.zeros((2, 3, 64, 64)))
    assert emb.shape == (2, 256) and np.all(np.isfinite(emb))


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    from cryptoface.train.config import ConfigError, load_config

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config(bad)
    cfg = load_config(REPO / "configs" / "smoke.json", ["epochs=3", "lr=0.5"])
    assert cfg.epochs == 3 and cfg.lr == 0.5
