"""`cryptoface bench` on the simulator: plan-only counts and one full run with the JSON fields the issue asks for."""

from __future__ import annotations

import json

from cryptoface.cli import main


def test_bench_simulator_json(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--backend", "simulator", "--resolution", "64", "--runs", "1", "--profile",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("keygen_s", "evaluation_key_bytes", "encrypt_s", "upload_bytes", "infer_s_median", "peak_rss_bytes"):
        assert key in result, key
    assert "obama3.jpg" in result["input"]
    assert result["rel_error"] < 1e-9  # the simulator is exact: only float64 rounding
    top = result["profile"]["top"]
    assert any("mul_plain" in r["function"] and r["calls"] == result["plan"]["totals"]["diagonals"] for r in top)
    assert 0 < sum(r["share"] for r in top) <= 1.0
    assert result["workers"] == 1  # --profile implies one engine thread: cProfile sees only one


def test_bench_profile_refuses_several_workers(capsys):
    argv = ["bench", "--backend", "simulator", "--resolution", "64", "--runs", "1", "--profile", "--workers", "2"]
    assert main(argv) == 2
    assert "--workers 1" in capsys.readouterr().err


def test_bench_plan_only(capsys):
    assert main(["bench", "--backend", "simulator", "--resolution", "64", "--plan-only"]) == 0
    assert "rotation keys" in capsys.readouterr().out
