"""`cryptoface eval pairs` on the bundled sample faces, and `eval lfw` on shared LFW when present."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from conftest import FACES, shared_dir
from cryptoface.cli import eval_cmd
from cryptoface.errors import DataError, ModelFileError
from cryptoface.eval.report import REQUIRED_KEYS


def run_cli(argv: list[str]) -> int:
    """Parse with only the eval command registered (other commands may not exist in this checkout)."""
    parser = argparse.ArgumentParser(prog="cryptoface")
    eval_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def write_pairs(path, rows):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image1", "image2", "same"])
        w.writerows(rows)


def test_eval_pairs_sface(tmp_path, capsys):
    (tmp_path / "imgs").symlink_to(FACES)
    csv_path = tmp_path / "pairs.csv"
    write_pairs(
        csv_path,
        [
            ("imgs/obama3.jpg", "imgs/obama4.jpg", 1),
            ("imgs/chirac1.jpg", "imgs/chirac3.jpg", 1),
            ("imgs/paul_rudd_1.jpg", "imgs/paul_rudd_2.jpg", 1),
            ("imgs/obama3.jpg", "imgs/chirac1.jpg", 0),
            ("imgs/obama4.jpg", "imgs/paul_rudd_2.jpg", 0),
            ("imgs/chirac3.jpg", "imgs/paul_rudd_1.jpg", 0),
        ],
    )
    out = tmp_path / "out.json"
    png = tmp_path / "roc.png"
    argv = ["eval", "pairs", "--csv", str(csv_path), "--model", "sface", "--threshold", "0.363"]
    assert run_cli([*argv, "--json", str(out), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    assert list(report)[: len(REQUIRED_KEYS)] == list(REQUIRED_KEYS)
    assert report["model"] == "sface" and report["resolution"] == 112 and report["n_pairs"] == 6
    # SFace separates these three people perfectly.
    assert report["accuracy"] == 1.0 and report["eer"] == 0.0
    assert report["accuracy_at_threshold"] == 1.0
    assert all(0.0 <= report[k] <= 1.0 for k in ("accuracy", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3"))
    genuine, impostor = report["pair_scores"][:3], report["pair_scores"][3:]
    assert min(genuine) > 0.4 > max(impostor)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in capsys.readouterr().out


def test_eval_pairs_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\nx,y,1\n")
    with pytest.raises(DataError, match="image1,image2,same"):
        run_cli(["eval", "pairs", "--csv", str(bad), "--model", "sface"])
    with pytest.raises(DataError, match="not found"):
        run_cli(["eval", "pairs", "--csv", str(tmp_path / "none.csv"), "--model", "sface"])
    with pytest.raises(ModelFileError, match="112"):
        run_cli(["eval", "pairs", "--csv", str(bad), "--model", "sface", "--resolution", "64"])
    with pytest.raises(ModelFileError):
        run_cli(["eval", "pairs", "--csv", str(bad), "--model", str(tmp_path / "missing.npz")])


def test_eval_lfw_missing_folder(tmp_path):
    with pytest.raises(DataError):
        run_cli(["eval", "lfw", "--lfw-dir", str(tmp_path / "nope"), "--model", "sface", "--cache-dir", str(tmp_path)])
    (tmp_path / "lfw").mkdir()
    (tmp_path / "lfw" / "pairs.txt").write_text("10 300\nfoo 1 2\n")
    with pytest.raises(DataError, match="pair lines"):
        run_cli(["eval", "lfw", "--lfw-dir", str(tmp_path / "lfw"), "--model", "sface", "--cache-dir", str(tmp_path)])


def test_read_and_limit_lfw_pairs(tmp_path):
    from cryptoface.eval.lfw import limit_pairs, read_pairs

    lines = ["2 3"]
    for k in range(2):
        lines += [f"A{k} 1 {i + 2}" for i in range(3)]
        lines += [f"B{k} {i + 1} C{k} 1" for i in range(3)]
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    pairs = read_pairs(path)
    assert len(pairs) == 12
    assert pairs.left[0] == "A0/A0_0001.jpg" and pairs.right[0] == "A0/A0_0002.jpg"
    assert pairs.left[3] == "B0/B0_0001.jpg" and pairs.right[3] == "C0/C0_0001.jpg"
    assert pairs.same.tolist() == ([True] * 3 + [False] * 3) * 2
    assert pairs.fold.tolist() == [0] * 6 + [1] * 6
    small = limit_pairs(pairs, 1)
    assert small.same.tolist() == [True, False, True, False] and small.fold.tolist() == [0, 0, 1, 1]
    path.write_text("\n".join([*lines[:4], "X 1", *lines[5:]]) + "\n")
    with pytest.raises(DataError, match=":5:"):
        read_pairs(path)


LFW = shared_dir() / "data" / "lfw"


@pytest.mark.shared
@pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason=f"LFW research data not present at {LFW}")
def test_eval_lfw_limit_sface(tmp_path, capsys):
    from cryptoface.assets import default_model_path

    out, plot = tmp_path / "lfw.json", tmp_path / "roc.png"
    bundled = str(default_model_path())
    argv = ["eval", "lfw", "--lfw-dir", str(LFW), "--model", "sface", "--limit", "20", "--quiet", "--compare", bundled]
    assert run_cli([*argv, "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert set(REQUIRED_KEYS) <= set(report)
    assert report["n_pairs"] == 400 and len(report["fold_accuracies"]) == 10
    assert report["accuracy"] > 0.95 and report["face_select"] == "center"
    assert list((tmp_path / "cache").glob("lfw-crops-*.npz"))
    # The compared model is scored on the same pairs, and both appear as rows of one table.
    (other,) = report["compared"]
    assert other["model"] == bundled and other["n_pairs"] == 400 and other["accuracy"] > 0.9
    assert other["accuracy"] != report["accuracy"] or other["eer"] != report["eer"]
    table = capsys.readouterr().out
    assert "TAR@1e-3" in table and any(line.startswith("sface ") for line in table.splitlines())
    assert any(line.startswith(bundled) for line in table.splitlines())
    assert plot.stat().st_size > 10_000


def test_eval_pairs_fused_model(tmp_path):
    from cryptoface.model.file import save_model
    from cryptoface.model.random import random_model

    model = save_model(random_model(64, seed=1), tmp_path / "net4.npz")
    (tmp_path / "imgs").symlink_to(FACES)
    csv_path = tmp_path / "pairs.csv"
    write_pairs(csv_path, [("imgs/obama3.jpg", "imgs/obama4.jpg", 1), ("imgs/obama3.jpg", "imgs/chirac1.jpg", 0)])
    out = tmp_path / "out.json"
    assert run_cli(["eval", "pairs", "--csv", str(csv_path), "--model", str(model), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["resolution"] == 64 and report["model"] == str(model) and report["n_pairs"] == 2
    with pytest.raises(ModelFileError, match="64x64"):
        run_cli(["eval", "pairs", "--csv", str(csv_path), "--model", str(model), "--resolution", "96"])


def test_default_model_missing_is_clear(tmp_path):
    from cryptoface.assets import ASSETS_DIR

    if (ASSETS_DIR / "cryptofacenet4.npz").is_file():
        pytest.skip("this build bundles a default model")
    with pytest.raises(ModelFileError, match="--model"):
        run_cli(["eval", "pairs", "--csv", str(tmp_path / "x.csv")])
