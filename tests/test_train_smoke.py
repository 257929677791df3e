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


def test_train_smoke_checkpoint_resume_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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
    # celeba:4 and celeba:6 are in-the-wild validation identities: left out of training; two are too few for a
    # FAR, so tau stays the training-pair one (tests/test_eval_wild.py covers the FAR rule)
    assert meta["training"]["data"]["wild_validation_crops"] == 12
    assert "far" not in meta["threshold_detail"] and "wild_eer" not in history[-1]
    emb = forward(model, np.zeros((2, 3, 64, 64)))
    assert emb.shape == (2, 256) and np.all(np.isfinite(emb))

    # export again from the checkpoint: blend 0 is exactly the starting weights, 0.5 is neither end
    from cryptoface.train.fuse import fuse
    from cryptoface.train.model import PatchCNN

    start = PatchCNN(64)
    start.load_state_dict(ckpt2["extra"]["init_state"])
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 64, 64))
    want0 = forward(fuse(start.double().eval()), x)
    got = {}
    for blend in (0.0, 0.5):
        name = f"b{blend}.npz"
        assert main(["train", *common, "--set", "epochs=2", "--resume", "--set", f"blend={blend}",
                     "--set", f"export_name={name}"]) == 0
        blended = load_model(out / name)
        assert blended.metadata["training"]["exported"] == {
            "selected_epoch": None, "select_by": None, "selected_value": None, "blend": blend}
        got[blend] = forward(blended, x)
    trained = forward(model, x)
    assert np.allclose(got[0.0], want0, rtol=1e-9, atol=1e-9) and not np.allclose(got[0.0], trained)
    assert not np.allclose(got[0.5], want0) and not np.allclose(got[0.5], trained)

    # selection must be tracked from the first epoch: refused up front on this checkpoint, before any training
    capsys.readouterr()
    assert main(["train", *common, "--set", "epochs=3", "--resume", "--set", "select_by=val_relational"]) == 2
    assert "'val_relational' was not tracked over the 2 epoch(s)" in capsys.readouterr().err
    assert torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["epoch"] == 2
    assert main(["train", *common, "--set", "select_by=wild_tar_1e-3", "--set", f"out_dir={tmp_path / 'w'}"]) == 2
    assert "'wild_tar_1e-3' is not logged by this run" in capsys.readouterr().err
    assert not (tmp_path / "w" / "checkpoint.pt").exists()

    # a run that tracks it: the exported weights are the checkpoint's best epoch (lowest hold-out loss)
    sel_out = tmp_path / "sel"
    sel = [*common, "--set", f"out_dir={sel_out}", "--set", "select_by=val_relational", "--set", "epochs=3"]
    assert main(["train", *sel]) == 0
    ck = torch.load(sel_out / "checkpoint.pt", map_location="cpu", weights_only=False)
    losses = [json.loads(line)["val_relational"] for line in (sel_out / "history.jsonl").read_text().splitlines()]
    best_epoch = int(np.argmin(losses)) + 1
    chosen = load_model(sel_out / "smoke.npz")
    assert chosen.metadata["training"]["exported"]["selected_epoch"] == best_epoch == ck["extra"]["best"]["epoch"]
    best_net = PatchCNN(64)
    best_net.load_state_dict(ck["extra"]["best"]["state"])
    assert np.allclose(forward(chosen, x), forward(fuse(best_net.double().eval()), x), rtol=1e-9, atol=1e-9)

    # the export-time rescale measured on every usable crop: the same function, smaller HerPN inputs
    from cryptoface.train.ranges import RangeStats, fused_forward_ranges

    assert main(["train", *sel, "--resume", "--set", "export_rescale_target=0.5",
                 "--set", "export_name=rescaled.npz"]) == 0
    rescaled = load_model(sel_out / "rescaled.npz")
    assert rescaled.metadata["training"]["exported"]["rescale"]["largest_factor"] > 1
    assert rescaled.metadata["training"]["exported"]["selected_epoch"] == best_epoch
    stats = {"plain": RangeStats(), "rescaled": RangeStats()}
    ya = fused_forward_ranges(chosen, x, stats["plain"])
    yb = fused_forward_ranges(rescaled, x, stats["rescaled"])
    assert np.allclose(ya, yb, rtol=1e-4, atol=1e-4 * np.abs(ya).max())
    assert stats["rescaled"].overall_max < stats["plain"].overall_max


def test_track_best_keeps_the_first_highest_epoch() -> None:
    from cryptoface.train.model import PatchCNN
    from cryptoface.train.train import blend_states, track_best

    model, best, low = PatchCNN(64), None, None
    for epoch, value in ((1, 0.5), (2, 0.7), (3, 0.7), (4, 0.6)):
        best = track_best("wild_tar_1e-3", {"epoch": epoch, "wild_tar_1e-3": value}, model, best)
        low = track_best("wild_eer", {"epoch": epoch, "wild_eer": value}, model, low)  # lower is better
    assert (best["epoch"], best["value"], best["through"]) == (2, 0.7, 4)
    assert (low["epoch"], low["value"]) == (1, 0.5)
    assert track_best(None, {"epoch": 5}, model, best) is best  # untracked: "through" stays at 4
    assert track_best(None, {"epoch": 1}, model, None) is None
    from cryptoface.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="select_by must be one of"):
        load_config(REPO / "configs" / "smoke.json", ["select_by=epoch"])
    with pytest.raises(ConfigError, match="positive"):
        load_config(REPO / "configs" / "smoke.json", ["export_rescale_target=0"])
    a = {"w": torch.zeros(2), "n": torch.tensor(3)}
    b = {"w": torch.ones(2), "n": torch.tensor(5)}
    mixed = blend_states(a, b, 0.25)
    assert torch.equal(mixed["w"], torch.full((2,), 0.25)) and int(mixed["n"]) == 5


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    from cryptoface.train.config import ConfigError, load_config

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config(bad)
    cfg = load_config(REPO / "configs" / "smoke.json", ["epochs=3", "lr=0.5"])
    assert cfg.epochs == 3 and cfg.lr == 0.5


def test_training_pack_round_trip_and_train_from_it(tmp_path: Path) -> None:
    """A pack holds the folder's exact pixels and (int8) teacher features, and `pack = FILE` trains from it."""
    from cryptoface.cli import main
    from cryptoface.model.file import load_model
    from cryptoface.train.config import load_config
    from cryptoface.train.data import decode_crops, read_index
    from cryptoface.train.distill import teacher_embeddings
    from cryptoface.train.pack import decode_pack, read_pack

    data = make_faces_train(tmp_path / "faces-train")
    cache = tmp_path / "cache"
    common = ["--config", str(REPO / "configs" / "smoke.json"), "--set", f"train_dir={data}"]
    common += ["--set", f"cache_dir={cache}", "--set", f"out_dir={tmp_path / 'run'}"]
    pack_file = tmp_path / "train.pack.npz"
    assert main(["train", *common, "--make-pack", str(pack_file)]) == 0

    pack = read_pack(pack_file)
    index = read_index(data)
    assert pack.index.member == index.member and pack.index.identity == index.identity
    assert np.array_equal(decode_pack(pack, workers=2, progress=False), decode_crops(index, progress=False))
    cfg = load_config(REPO / "configs" / "smoke.json", [f"train_dir={data}", f"cache_dir={cache}"])
    crops = decode_crops(index, progress=False)
    teacher, ok = teacher_embeddings(crops, index.digest, "random", cfg.teacher_views, cache, progress=False)
    assert ok.all() and pack.teacher.shape == teacher.shape
    cos = np.sum(pack.teacher * teacher, axis=-1) / np.linalg.norm(pack.teacher, axis=-1)
    assert cos.min() > 0.9999

    out = tmp_path / "from-pack"
    args = ["train", *common, "--set", f"pack={pack_file}", "--set", "train_dir=/nonexistent"]
    assert main([*args, "--set", f"out_dir={out}", "--set", "holdout_identities=2"]) == 0
    meta = load_model(out / "smoke.npz").metadata
    assert meta["training"]["data"]["pack"]["crops"] == N_CROPS
    # two whole identities (6 crops each) are held out and scored as verification pairs
    held = meta["training"]["data"]["holdout_identities"]
    assert len(held) == 2 and meta["training"]["data"]["holdout"] >= 12
    assert 0.0 <= meta["training"]["history"][-1]["val_pair_accuracy"] <= 1.0
    assert meta["training"]["config"]["pack"] == str(pack_file)


def test_training_pack_rejects_other_files(tmp_path: Path) -> None:
    from cryptoface.errors import DataError
    from cryptoface.train.pack import read_pack

    with pytest.raises(DataError, match="not found"):
        read_pack(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(DataError, match="not a cryptoface training pack"):
        read_pack(other)
