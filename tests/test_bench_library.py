"""The benchmark library without the CLI: options in, dataclass reports out, JSON from ``to_json()``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cryptoface.assets import default_model_path
from cryptoface.bench import InferenceOptions, MatchOptions, Report, peak_rss_bytes, plan_report, run_match_bench
from cryptoface.bench.inputs import bench_model
from cryptoface.bench.report import OPTIONAL, bytes_by_kind, write_json


@dataclass(kw_only=True)
class _Demo(Report):
    always: str | None
    sometimes: float | None = field(default=None, metadata=OPTIONAL)


def test_optional_fields_leave_the_json_while_none(tmp_path):
    assert _Demo(always=None).to_dict() == {"always": None}
    assert json.loads(_Demo(always="x", sometimes=1.5).to_json()) == {"always": "x", "sometimes": 1.5}
    write_json(tmp_path / "sub" / "r.json", _Demo(always="y"))
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"always": "y"}
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_helpers():
    assert peak_rss_bytes() > 10 * 2**20
    assert bytes_by_kind({"public": 3, "rotation:1": 5, "rotation:2": 7}) == {"public": 3, "rotation": 12}


def test_bench_model_is_the_bundled_one_at_its_resolution():
    _, name = bench_model(None, 64)
    assert name == str(default_model_path())
    model, name = bench_model(None, 96, seed=3)
    assert model.resolution == 96 and name == "random_model(96, seed=3)"


def test_plan_report():
    report = plan_report(InferenceOptions(resolution=64, cost_model="openfhe"))
    d = report.to_dict()
    assert list(d) == ["resolution", "backend", "protocol", "family", "key_mode", "params", "plan"]
    assert d["plan"]["cost_model"] == "openfhe" and d["protocol"] == "refresh" and d["params"]["levels"] == 21
    assert d["plan"]["clear_tail"] and d["plan"]["totals"]["levels"] == 21
    keys = d["plan"]["rotation_keys"]
    assert keys == sorted(set(keys))
    # modelled key bytes: 23 rotation keys of 65.0 MB (README: 1,495 MB of rotation keys measured, 1.58 GB in all)
    assert len(keys) == 23 and abs(d["plan"]["key_bytes_estimate"] / 1.4955e9 - 1) < 0.01
    one_round = plan_report(InferenceOptions(resolution=64, protocol="one-round")).to_dict()
    assert one_round["params"]["levels"] == 30 and not one_round["plan"]["clear_tail"]
    assert set(keys) < set(one_round["plan"]["rotation_keys"])  # the head's reduction keys are the client's now


def test_match_bench_reports_as_it_goes():
    seen = []
    report = run_match_bench(
        MatchOptions(backend="simulator", log_ring=13, pairs=3, gallery_sizes=(20,), runs=1, progress=False),
        on_update=lambda r: seen.append(r.to_dict()),
    )
    assert seen and seen[-1] == report.to_dict()
    assert report.scores is not None and report.scores.max_abs_error_vs_clear_polynomial < 1e-9
    assert report.identify["20"].argmax == report.identify["20"].argmax_clear
    assert report.storage is not None and report.storage.subjects == 3
    assert report.summary()["server_peak_rss_bytes"] == report.server.peak_rss_bytes
