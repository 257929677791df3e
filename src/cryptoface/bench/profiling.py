"""cProfile of one encrypted inference: where its time goes, by function (backend library calls included)."""

from __future__ import annotations

import cProfile
import pstats
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptoface.bench.report import Report

PROFILE_NOTE = "cProfile self time; builtin rows are the backend library's own calls"


@dataclass(kw_only=True)
class ProfileReport(Report):
    """The functions that took the most self time of a profiled inference (``top``: function, calls, self_s,
    share of ``inference_s``)."""

    inference_s: float
    note: str = PROFILE_NOTE
    top: list[dict[str, Any]]


def start_profile() -> cProfile.Profile:
    """A running profiler; it sees only the thread that started it."""
    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def profile_report(profiler: cProfile.Profile, total_s: float, top: int = 25) -> ProfileReport:
    """Stop ``profiler`` and rank its functions by self time against the inference's wall time ``total_s``."""
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]  # {(file, line, name): (prim, calls, self, cum, callers)}
    rows = sorted(((v[2], v[1], k) for k, v in stats.items()), reverse=True)[:top]
    return ProfileReport(
        inference_s=total_s,
        top=[{"function": name if file == "~" else f"{Path(file).name}:{line} {name}", "calls": calls,
              "self_s": round(self_s, 3), "share": round(self_s / total_s, 4)}
             for self_s, calls, (file, line, name) in rows],
    )
