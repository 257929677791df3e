"""A small run of scripts/load_test.py on the simulator: several tenants and clients at once against one server
process whose memory budget holds about two of their key sets. The server stays up, /v1/health answers
throughout, nothing acknowledged is lost (also after kill -9 and a restart), and peak RSS stays under the budget."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "load_test.py"


def load_script():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_load_on_the_simulator(tmp_path):
    lt = load_script()
    out = tmp_path / "load.json"
    args = lt.parse(["--tenants", "3", "--clients", "6", "--requests", "150", "--subjects", "2",
                     "--time-limit", "240", "--json", str(out)])
    report = lt.run(args)
    print(json.dumps(report, indent=2))
    assert json.loads(out.read_text()) == report
    assert report["server_alive"] and report["errors"] == []
    assert report["health"]["failed"] == 0 and report["health"]["checks"] > 0
    assert report["requests"] >= 150 and report["ok"] >= 100
    assert report["lost"] == 0 and report["lost_after_kill9_restart"] == 0
    assert report["acknowledged_enrolments"] >= 6
    assert report["max_score_error"] < 1e-3
    assert report["peak_rss_under_budget"]
    assert report["budget_peak_reserved_bytes"] <= report["memory_budget_bytes"] - report["budget_baseline_bytes"]
    assert report["latency_ms"]["p50"] is not None and report["latency_ms"]["p95"] >= report["latency_ms"]["p50"]
