#!/usr/bin/env python
"""Project patch-parallel latency (W = 1..16 workers, Net4/9/16) and sharded 1:N time from measured numbers.

Inputs (nothing is hard-coded; every number comes from a bench JSON or an explicit command-line value):

* per-unit seconds: ``--unit-bench B.json`` (a ``cryptoface bench --executor ...`` run: the median warm
  per-unit compute time) or ``--unit-seconds S`` (e.g. a measured real-backend Net4 inference; a Net4 unit is
  exactly the Net4 plan), with ``--input-bytes-per-unit`` / ``--partial-bytes`` for that backend's ciphertexts
  (default: the sizes in ``--unit-bench``);
* Ray overhead: ``--ray-bench R.json`` (``bench --executor ray``): object-store round trips of several payload
  sizes (fitted as ``a + b * bytes`` per direction), the empty-call latency and the measured per-request
  overhead (wall time minus the workers' critical path);
* 1:N: ``--gallery-bench G.json`` (``bench --executor ... --gallery N``: seconds per packed chunk of
  ``capacity`` templates, score ciphertext bytes) or ``--chunk-seconds S`` with ``--score-bytes``.

Model: latency(W) = units * xfer(in) + ceil(units / W) * unit_s + units * xfer(partial) + request_overhead (the
coordinator sends the inputs and receives the partials one after the other), with
units = 1 / 3 / 4 (Net4 / Net9 / Net16, :func:`cryptoface.engine.units.unit_patches`). 1:N time(N, W) =
ceil(ceil(N / capacity) / W) * chunk_s + xfer(probe) + request_overhead; chunks are cached on the workers (put once),
so only the probe goes out and one score ciphertext per chunk comes back (``result_bytes``, for the client).
The model assumes one CPU per worker (one machine or core each) and the workers' memory for a key set each.

Usage:
  python scripts/project_scaleout.py --unit-bench sim-ray2.json --ray-bench sim-ray2.json \\
      --gallery-bench sim-gallery.json --unit-seconds 300 --input-bytes-per-unit 65e6 --partial-bytes 8e6 \\
      --json projection.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

UNITS = {"Net4": 1, "Net9": 3, "Net16": 4}
GALLERY_SIZES = (10**4, 10**5, 10**6, 10**7)


def _load(path: Path | None) -> dict:
    return json.loads(path.read_text()) if path else {}


def transfer_fit(ray: dict) -> tuple[float, float]:
    """(seconds, seconds per byte) of one object-store transfer, from the round trips (two transfers each)."""
    pts = ray.get("ray_transfer") or []
    if not pts:
        raise SystemExit("the --ray-bench file has no 'ray_transfer' measurements (run bench --executor ray)")
    x = np.array([p["payload_bytes"] for p in pts], dtype=float)
    y = np.array([p["round_trip_s"] for p in pts], dtype=float) / 2.0
    if len(pts) == 1:
        return 0.0, float(y[0] / x[0])
    b, a = np.polyfit(x, y, 1)
    return max(0.0, float(a)), max(0.0, float(b))


def project(args: argparse.Namespace) -> dict:
    ub, rb, gb = _load(args.unit_bench), _load(args.ray_bench), _load(args.gallery_bench)
    if args.unit_seconds is not None:
        unit_s, unit_src = float(args.unit_seconds), "--unit-seconds (command line)"
    elif ub:
        unit_s, unit_src = float(ub["unit_compute_s_median"]), f"{args.unit_bench}: unit_compute_s_median"
    else:
        raise SystemExit("give --unit-bench or --unit-seconds")
    units_in_bench = max(1, int(ub.get("units", 1))) if ub else 1
    in_bytes = args.input_bytes_per_unit or (ub["upload_bytes"] / units_in_bench if ub else None)
    part_bytes = args.partial_bytes or (ub["partial_bytes"] / units_in_bench if ub else None)
    if in_bytes is None or part_bytes is None:
        raise SystemExit("give --input-bytes-per-unit and --partial-bytes (or --unit-bench)")
    a, b = transfer_fit(rb)
    overhead = float(rb.get("ray_overhead_s_median", 0.0)) if args.include_measured_overhead else 0.0

    def xfer(nbytes: float) -> float:
        return a + b * float(nbytes)

    rows = []
    for w in range(1, args.max_workers + 1):
        row = {"workers": w}
        for name, u in UNITS.items():
            # the coordinator puts every unit's inputs and gets every partial one after the other (conservative)
            row[name] = u * xfer(in_bytes) + math.ceil(u / w) * unit_s + u * xfer(part_bytes) + overhead
        row["Net16/Net4"] = row["Net16"] / row["Net4"]
        rows.append(row)

    gallery = None
    chunk_s = args.chunk_seconds if args.chunk_seconds is not None else gb.get("gallery", {}).get("seconds_per_chunk")
    if chunk_s is not None:
        g = gb.get("gallery", {})
        capacity = int(args.capacity or g.get("capacity", 128))
        score_bytes = float(args.score_bytes or g.get("score_bytes", 0))
        probe_bytes = float(args.probe_bytes or g.get("chunk_bytes", 0))
        gallery = {"chunk_s": float(chunk_s), "capacity": capacity, "score_bytes": score_bytes,
                   "source": "--chunk-seconds (command line)" if args.chunk_seconds is not None
                   else f"{args.gallery_bench}: gallery.seconds_per_chunk", "rows": []}
        for n in GALLERY_SIZES:
            chunks = math.ceil(n / capacity)
            for w in args.gallery_workers:
                t = math.ceil(chunks / w) * chunk_s + xfer(probe_bytes) + overhead
                gallery["rows"].append({"templates": n, "chunks": chunks, "workers": w, "seconds": t,
                                        "result_bytes": chunks * score_bytes})
    return {
        "inputs": {"unit_s": unit_s, "unit_source": unit_src, "input_bytes_per_unit": in_bytes,
                   "partial_bytes": part_bytes, "transfer_fixed_s": a, "transfer_s_per_byte": b,
                   "transfer_source": str(args.ray_bench), "request_overhead_s": overhead,
                   "units": UNITS},
        "latency": rows,
        "gallery": gallery,
        "net16_within_1_2x_net4_from_w": next((r["workers"] for r in rows if r["Net16/Net4"] <= 1.2), None),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unit-bench", type=Path)
    p.add_argument("--unit-seconds", type=float, help="seconds of one Net4-plan unit on one worker (measured)")
    p.add_argument("--input-bytes-per-unit", type=float)
    p.add_argument("--partial-bytes", type=float)
    p.add_argument("--ray-bench", type=Path, required=True)
    p.add_argument("--include-measured-overhead", action=argparse.BooleanOptionalAction, default=True,
                   help="add the measured per-request Ray overhead (wall - critical path) to every projection")
    p.add_argument("--gallery-bench", type=Path)
    p.add_argument("--chunk-seconds", type=float)
    p.add_argument("--capacity", type=int)
    p.add_argument("--score-bytes", type=float)
    p.add_argument("--probe-bytes", type=float)
    p.add_argument("--max-workers", type=int, default=16)
    p.add_argument("--gallery-workers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8, 16])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    out = project(args)
    i = out["inputs"]
    print(f"per unit {i['unit_s']:.3g} s ({i['unit_source']}); transfer {i['transfer_fixed_s'] * 1e3:.2f} ms + "
          f"{i['transfer_s_per_byte'] * 1e9:.3f} s/GB; request overhead {i['request_overhead_s'] * 1e3:.1f} ms")
    print(f"{'W':>3} | {'Net4 s':>10} | {'Net9 s':>10} | {'Net16 s':>10} | Net16/Net4")
    for r in out["latency"]:
        print(f"{r['workers']:>3} | {r['Net4']:>10.2f} | {r['Net9']:>10.2f} | {r['Net16']:>10.2f} | "
              f"{r['Net16/Net4']:.3f}")
    if out["gallery"]:
        g = out["gallery"]
        print(f"1:N: {g['chunk_s']:.3g} s per chunk of {g['capacity']} templates ({g['source']})")
        print(f"{'templates':>10} | {'W':>3} | {'seconds':>12} | result GB")
        for r in g["rows"]:
            print(f"{r['templates']:>10} | {r['workers']:>3} | {r['seconds']:>12.2f} | {r['result_bytes'] / 1e9:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
