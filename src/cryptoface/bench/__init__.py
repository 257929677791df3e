"""Benchmarks as library functions: each takes an options dataclass and returns a report dataclass.

* :func:`plan_report` / :func:`run_inference` (:mod:`.inference`): the plan's counts, and encrypted
  CryptoFaceNet inference timed in one process; :func:`run_scaleout` (:mod:`.scaleout`): patch-parallel units and
  sharded 1:N through an executor (in process or Ray).
* :func:`run_match_bench` (:mod:`.matching`): encrypted matching with the server in a separate process
  (:mod:`.match_server`) that holds no secret key.
* :mod:`.memory`: the one peak-RSS helper; :mod:`.report`: dataclass -> JSON.

Reports serialise with ``to_json()``; the ``cryptoface bench`` and ``bench-match`` commands only parse
arguments, call these and print.
"""

from cryptoface.bench.inference import (
    InferenceOptions,
    InferenceReport,
    InferenceRun,
    PlanReport,
    PlanSummary,
    plan_report,
    run_inference,
)
from cryptoface.bench.match_report import MatchReport
from cryptoface.bench.matching import MatchOptions, run_match_bench
from cryptoface.bench.memory import drop_client_rotation_keys, peak_rss_bytes
from cryptoface.bench.report import Report, write_json
from cryptoface.bench.scaleout import GalleryShardReport, ScaleoutOptions, ScaleoutReport, run_scaleout

__all__ = [
    "GalleryShardReport",
    "InferenceOptions",
    "InferenceReport",
    "InferenceRun",
    "MatchOptions",
    "MatchReport",
    "PlanReport",
    "PlanSummary",
    "Report",
    "ScaleoutOptions",
    "ScaleoutReport",
    "drop_client_rotation_keys",
    "peak_rss_bytes",
    "plan_report",
    "run_inference",
    "run_match_bench",
    "run_scaleout",
    "write_json",
]
