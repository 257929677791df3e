#!/usr/bin/env python
"""Screenshots of every page of the web app, made by a real headless Chromium walking the user's path
(enrol -> verify accept -> verify reject -> identify -> tasks -> settings -> subjects -> delete), and the time of
each task, as JSON:

    .venv/bin/python scripts/ui_screenshots.py --out docs/screenshots                        # simulator, seconds
    .venv-openfhe/bin/python scripts/ui_screenshots.py --backend openfhe --json ui-openfhe.json --out /tmp/shots

A matching server (the bundled model, SQLite in a temporary folder) and the web app run in this process on
loopback ports; ``--backend openfhe`` makes a full-size key set (N = 2^16, 128-bit; ~2 GB of keys, every
inference ~2 minutes on 2 cores). Needs Debian's chromium and chromium-driver and the selenium package.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the walk and the servers are the browser tests' own helpers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("simulator", "openfhe"), default="simulator")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="folder for the PNG files")
    ap.add_argument("--json", type=Path, default=None, help="write the tasks' step times here")
    args = ap.parse_args()

    from browser import chromium
    from cryptoface.assets import SAMPLES_DIR, default_model_path
    from cryptoface.client import Client, ClientKeys
    from cryptoface.client.http import HTTPTransport
    from cryptoface.model.file import load_model
    from cryptoface.params import default_parameters
    from test_service_support import running
    from ui_flow import Walk, running_ui, walkthrough

    photos = {"enrol": SAMPLES_DIR / "obama3.jpg", "genuine": SAMPLES_DIR / "obama4.jpg",
              "impostor": SAMPLES_DIR / "chirac1.jpg"}
    t0 = time.perf_counter()
    keys = ClientKeys.generate(args.backend, default_parameters(64), resolution=64)
    keygen = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp, \
            running(Path(tmp) / "server.db", model=load_model(default_model_path()), model_id="bundled") as srv:
        _, http = srv.tenant("demo")
        client = Client(keys, HTTPTransport(srv.url, api_key=http.headers["x-api-key"], timeout=3600))
        t0 = time.perf_counter()
        client.register()
        register = time.perf_counter() - t0
        with running_ui(client, srv.url) as session, chromium() as driver:
            driver.set_window_size(1280, 1000)
            walk = Walk(driver, session, args.out)
            results = walkthrough(walk, photos)
            tasks = [{"title": t.title, "state": t.state, "result": t.result,
                      "steps": {s.name: s.seconds for s in t.steps},
                      "total_s": round(sum(s.seconds or 0 for s in t.steps), 2)} for t in reversed(session.tasks.all())]
    report = {"backend": args.backend, "params": keys.params_json, "keygen_s": round(keygen, 1),
              "register_s": round(register, 1), "browser_wall_s": {k: round(v, 1) for k, v in walk.timings.items()},
              "results": results, "tasks": tasks}
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"screenshots in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
