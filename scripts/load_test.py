#!/usr/bin/env python
"""Bounded load test of the matching server: several tenants and clients at once against one server process.

The server runs in its own process (``load_test.py serve``, uvicorn on 127.0.0.1 over a fresh SQLite file), so its
resident memory is measured alone (sampled from /proc every 0.1 s, and the kernel's high-water mark VmHWM). Its
memory budget is the RSS it has after start-up plus ``--headroom`` bytes (default: room for about three of the
tenants' key sets, so that key sets are evicted and requests are refused with 503 + Retry-After under load).

What it checks and reports (JSON): the server stays up, ``/v1/health`` answers throughout (probed every 0.2 s),
no 5xx, every acknowledged enrolment is still there afterwards (also after a ``kill -9`` and a restart), verify
scores decrypt to the clear cosine, and peak RSS stays under the budget; with tenants, clients, requests, 503s,
peak RSS and p50/p95 latencies. The load is matching on encrypted templates (verify, identify, enrol): encrypted
inference takes minutes per request and is bounded by the heavy slots instead.

Simulator (breadth; the default suite runs a small one)::

    .venv/bin/python scripts/load_test.py --tenants 4 --clients 8 --requests 400 --json load-sim.json

Real OpenFHE key sets (N = 2^14, 7 levels, matching keys ~0.7 GB per tenant; ~10 minutes on 2 CPUs)::

    .venv-openfhe/bin/python scripts/load_test.py --backend openfhe --log-ring 14 --levels 7 --tenants 3 \\
        --clients 4 --requests 120 --time-limit 900 --json load-openfhe.json

Real OpenFHE key sets at the product's default parameters (``--levels 0``: N = 2^16, 21 levels since the clear
tail, 23 and 2.03 GB stored per tenant when measured; budget for one loaded key set and one inference, so tenants
take turns; ~12 minutes)::

    .venv-openfhe/bin/python scripts/load_test.py --backend openfhe --levels 0 --tenants 3 --clients 3 \\
        --subjects 1 --requests 18 --headroom 9000000000 --time-limit 1500 --json load-full.json

The report's ``health.uncharged`` is the most the server's RSS stood above its budget's charges at a probe.

Every loop is bounded in count and time, and all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cryptoface.match.clear import synthetic_embedding

ADMIN_ENV = "CRYPTOFACE_ADMIN_KEY"
HEALTH_PERIOD_S = 0.2
RSS_PERIOD_S = 0.1
MAX_RETRY_WAIT_S = 2.0  # clients honour Retry-After up to this long (a load test, not a patient user)


# -- the server process -----------------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    """Run the server (this is the child process): budget = RSS after start-up + headroom."""
    import uvicorn

    from cryptoface.heap import limit_arenas
    from cryptoface.service import create_app
    from cryptoface.service.budget import rss_bytes
    from cryptoface.store import SQLiteStore

    limit_arenas()  # as `cryptoface serve` does (cryptoface.cli), before uvicorn's threads exist
    app = create_app(SQLiteStore(args.db), admin_key=os.environ[ADMIN_ENV], max_heavy=args.max_heavy,
                     retry_after=args.retry_after, memory_budget=1 << 62, observe_rss=True)
    budget = app.state.service.budget
    budget.baseline = rss_bytes()
    budget.limit = budget.baseline + args.headroom
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


def _own_status(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure_keys(args: argparse.Namespace) -> int:
    """Loaded / stored bytes of a key set: a fresh process loads the saved keys as the server does (RSS growth)."""
    if args.keys_dir:  # the child: load and report
        from cryptoface.backends import backend_class
        from cryptoface.heap import limit_arenas
        from cryptoface.params import params_from_json
        from cryptoface.service.budget import rss_bytes

        limit_arenas()  # as the server does
        root = Path(args.keys_dir)
        meta = json.loads((root / "meta.json").read_text())
        before = rss_bytes()  # the peak counts the bytes read too: the server reads them from its store
        keys = {p.stem.replace("_", ":"): p.read_bytes() for p in (root / "eval").iterdir()}
        stored = sum(len(v) for v in keys.values())
        backend = backend_class(meta["backend"]).from_public_keys(params_from_json(json.dumps(meta["params"])), keys)
        del keys  # the server drops the bytes once loaded; what stays is the backend
        import gc

        gc.collect()
        grown = rss_bytes() - before
        peak = _own_status("VmHWM") - before
        print(json.dumps({"stored_bytes": stored, "rss_growth_bytes": grown, "factor": round(grown / stored, 3),
                          "peak_while_loading_bytes": peak, "peak_factor": round(peak / stored, 3),
                          "rotation_keys": len(backend.rotation_steps())}))
        return 0
    from cryptoface.client import ClientKeys

    keys = ClientKeys.generate(args.backend, _params(args), stride=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "eval").mkdir()
        for kind, data in keys.evaluation_keys():
            (root / "eval" / (kind.replace(":", "_") + ".bin")).write_bytes(data)
        (root / "meta.json").write_text(json.dumps({"backend": args.backend,
                                                    "params": json.loads(keys.params_json)}))
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--backend", args.backend,
                              "measure-keys", "--keys-dir", str(root)], capture_output=True, text=True)
    print(out.stdout.strip() or out.stderr.strip()[-2000:])
    return out.returncode


def _die_with_parent() -> None:
    """In the server child: be killed with the load generator (an OOM kill of it must not orphan the server)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, db: Path, headroom: int, max_heavy: int, retry_after: int, admin_key: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "serve", "--db", str(db), "--port", str(self.port),
               "--headroom", str(headroom), "--max-heavy", str(max_heavy), "--retry-after", str(retry_after)]
        self.proc = subprocess.Popen(cmd, env={**os.environ, ADMIN_ENV: admin_key}, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start (exit {self.proc.poll()})")
            time.sleep(0.1)

    def status(self, field_name: str) -> int:
        """A VmRSS/VmHWM line of the server's /proc status, in bytes."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def kill(self) -> None:
        """kill -9: nothing is flushed, nothing acknowledged may be lost."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


# -- clients --------------------------------------------------------------------------------------------
@dataclass
class Tenant:
    name: str
    token: str
    keys: Any
    key_id: str = ""
    faces: dict[str, np.ndarray] = field(default_factory=dict)
    acked: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)  # name -> (subject id, templates)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests += 1
            self.statuses[status] += 1
            if status < 400:
                self.latencies.setdefault(op, []).append(seconds)
            elif status >= 500 and status != 503:
                self.errors.append(f"{op}: HTTP {status}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _call(http: httpx.Client, stats: Stats, op: str, method: str, path: str, deadline: float,
          **kw: Any) -> httpx.Response | None:
    """One logical request: retried on 503 (Retry-After honoured, capped), each attempt counted."""
    while time.monotonic() < deadline:
        t = time.perf_counter()
        try:
            r = http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            with stats.lock:
                stats.requests += 1
                stats.errors.append(f"{op}: {type(exc).__name__}: {exc}")
            return None
        stats.record(op, r.status_code, time.perf_counter() - t)
        if r.status_code != 503:
            return r
        time.sleep(min(float(r.headers.get("retry-after", "1")), MAX_RETRY_WAIT_S))
    return None


def _params(args: argparse.Namespace) -> Any:
    from cryptoface.backends.protocol import CkksParameters
    from cryptoface.params import default_parameters, secure_parameters

    if args.levels == 0:  # the product's default parameters, as `cryptoface keygen` makes them
        return default_parameters()
    if args.backend == "simulator":
        return CkksParameters(log_ring=args.log_ring, levels=args.levels)
    return secure_parameters(args.levels, args.log_ring)


def _probe(tenant: Tenant, e: np.ndarray, level: int) -> dict[str, Any]:
    from cryptoface.match.clear import encrypt_embedding_for_tests

    be = tenant.keys.backend
    ct = encrypt_embedding_for_tests(be, e, tenant.keys.layout, level)
    return {"ciphertext": _b64(be.serialize(ct)), "stride": 1, "replicas": 1}


_embedding = synthetic_embedding  # one definition: cryptoface.match.clear


def _register(http: httpx.Client, tenant: Tenant, params_json: dict[str, int], stats: Stats, deadline: float) -> None:
    from cryptoface.service.proof import answer_challenge

    keys = tenant.keys
    _, public = next(keys.evaluation_keys())  # the public key comes first
    body = {"backend": keys.backend_name, "params": params_json, "keys": {"public": _b64(public)}}
    r = _call(http, stats, "register", "POST", "/v1/keysets", deadline, json=body)
    if r is None or r.status_code != 201:
        raise RuntimeError(f"registration failed: {None if r is None else r.text}")
    reg = r.json()
    ch = reg["challenge"]
    values = keys.backend.decrypt(keys.backend.deserialize(base64.b64decode(ch["ciphertext"])))
    r = _call(http, stats, "proof", "POST", f"/v1/keysets/{reg['key_id']}/proof", deadline,
              json={"proof": answer_challenge(values, ch["count"], ch["nonce"])})
    if r is None or r.status_code != 200:
        raise RuntimeError(f"proof failed: {None if r is None else r.text}")
    for kind, data in keys.evaluation_keys(exclude=["public"]):  # one key in memory at a time, as the client does
        r = _call(http, stats, "key", "PUT", f"/v1/keysets/{reg['key_id']}/keys/{kind}", deadline, content=data)
        if r is None or r.status_code != 201:
            raise RuntimeError(f"key upload failed: {None if r is None else r.text}")
    tenant.key_id = reg["key_id"]


def _enrol(http: httpx.Client, tenant: Tenant, name: str, e: np.ndarray, level: int, stats: Stats,
           deadline: float) -> None:
    r = _call(http, stats, "enrol", "POST", f"/v1/keysets/{tenant.key_id}/subjects", deadline,
              json={"subject": name, "probes": [_probe(tenant, e, level)]})
    if r is not None and r.status_code == 201:
        with tenant.lock:
            tenant.faces[name] = e
            tenant.acked[name] = (int(r.json()["subject_id"]), tuple(r.json()["template_ids"]))


def _client(url: str, tenant: Tenant, seed: int, stats: Stats, budget: list[int], budget_lock: threading.Lock,
            deadline: float, level: int) -> None:
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=600, headers={"x-api-key": tenant.token}) as http:
        n = 0
        while time.monotonic() < deadline:
            with budget_lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            n += 1
            with tenant.lock:
                names = list(tenant.faces)
            roll = rng.random()
            if roll < 0.2 or not names:
                _enrol(http, tenant, f"s{seed}-{n}", _embedding(rng), level, stats, deadline)
            elif roll < 0.8:
                name = names[int(rng.integers(len(names)))]
                _call(http, stats, "verify", "POST", f"/v1/keysets/{tenant.key_id}/verify", deadline,
                      json={"subject": name, "probe": _probe(tenant, _embedding(rng, tenant.faces[name]), level)})
            else:
                _call(http, stats, "identify", "POST", f"/v1/keysets/{tenant.key_id}/identify", deadline,
                      json={"probe": _probe(tenant, _embedding(rng), level)})


def _health(server: ServerProcess, stop: threading.Event, out: dict[str, Any]) -> None:
    """Probe /v1/health; beside it, how far the server's RSS stands above its budget's charges (what they miss)."""
    with httpx.Client(base_url=server.url, timeout=5) as http:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                r = http.get("/v1/health")
                ok = r.status_code == 200
                memory = r.json().get("memory", {}) if ok else {}
            except (httpx.HTTPError, ValueError):
                ok, memory = False, {}
            if memory:
                rss = server.status("VmRSS")
                missed = rss - int(memory.get("baseline", 0)) - int(memory.get("used", 0))
                if missed > out["uncharged"]["bytes"]:
                    out["uncharged"] = {"bytes": missed, "rss": rss, "used": int(memory.get("used", 0))}
            out["checks"] += 1
            out["failed"] += 0 if ok else 1
            out["max_ms"] = max(out["max_ms"], (time.perf_counter() - t) * 1e3)
            stop.wait(HEALTH_PERIOD_S)


def _rss(server: ServerProcess, stop: threading.Event, out: dict[str, int]) -> None:
    while not stop.is_set():
        out["peak"] = max(out["peak"], server.status("VmRSS"))
        stop.wait(RSS_PERIOD_S)


def _pct(values: Sequence[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(np.asarray(values) * 1e3, q)), 1)


def _lost(url: str, tenants: list[Tenant]) -> int:
    """Acknowledged enrolments missing from the server (each tenant lists its own subjects)."""
    lost = 0
    for t in tenants:
        with httpx.Client(base_url=url, timeout=120, headers={"x-api-key": t.token}) as http:
            listed = {s["subject"]: (s["subject_id"], tuple(s["template_ids"]))
                      for s in http.get(f"/v1/keysets/{t.key_id}/subjects").json()}
        lost += sum(1 for name, ack in t.acked.items() if listed.get(name) != ack)
    return lost


def _check_scores(url: str, tenants: list[Tenant], level: int) -> float:
    """The largest |decrypted score - clear cosine| over one verify per tenant."""
    worst = 0.0
    rng = np.random.default_rng(7)
    for t in tenants:
        name = next(iter(t.faces))
        probe_e = _embedding(rng, t.faces[name], 0.6)
        with httpx.Client(base_url=url, timeout=600, headers={"x-api-key": t.token}) as http:
            for _ in range(100):
                r = http.post(f"/v1/keysets/{t.key_id}/verify",
                              json={"subject": name, "probe": _probe(t, probe_e, level)})
                if r.status_code != 503:
                    break
                time.sleep(0.5)
        if r.status_code != 200:
            return float("inf")
        ct = t.keys.backend.deserialize(base64.b64decode(r.json()["results"][0]))
        got = float(t.keys.backend.decrypt(ct)[0])
        a, b = probe_e, t.faces[name]
        worst = max(worst, abs(got - float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))))
    return worst


def _fresh_keys(client_keys: Any, backend: str, params: Any, home: Path) -> Any:
    """A tenant's keys as its client holds them: generated, saved, loaded back (public + secret key only). The
    evaluation keys stay on disk and are uploaded one at a time, so one load generator can play several tenants
    without holding several full key sets (at N = 2^16 that ran it out of memory)."""
    from cryptoface.bench.memory import drop_client_rotation_keys, trim_heap

    keys = client_keys.generate(backend, params, stride=1)
    keys.save(home)
    drop_client_rotation_keys(keys.backend)  # OpenFHE keeps them in a process-wide map until told to drop them
    del keys
    loaded = client_keys.load(home)
    trim_heap()
    return loaded


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole load test; returns the report (also written to ``--json``)."""
    from cryptoface.client import ClientKeys
    from cryptoface.match.homomorphic import normalise_levels
    from cryptoface.match.layout import TemplateLayout
    from cryptoface.params import LEVELS, params_to_json
    from cryptoface.service.budget import key_set_cost, working_set

    t0 = time.monotonic()
    deadline = t0 + args.time_limit
    params = _params(args)
    level = min(params.levels, normalise_levels(TemplateLayout(1)) + LEVELS.score + 2)
    params_json = json.loads(params_to_json(params))
    work = tempfile.TemporaryDirectory()  # entered below, once the server can start
    tenants = [Tenant(f"tenant-{i}", "", _fresh_keys(ClientKeys, args.backend, params, Path(work.name) / f"home{i}"))
               for i in range(args.tenants)]
    n_keys = len([k for k in tenants[0].keys.key_kinds if k != "public"])
    stored = tenants[0].keys.evaluation_key_bytes()
    per_key_set = key_set_cost(args.backend, params, stored, n_keys)
    # room for two loaded key sets and a third being read (its stored bytes on top while it loads): with more
    # tenants than that, idle key sets are evicted and requests wait (503) for them to be loaded again
    headroom = args.headroom or int(3 * per_key_set + 3 * working_set(params, "match") + 64 * 2**20)
    admin_key = base64.urlsafe_b64encode(os.urandom(24)).decode()
    stats = Stats()
    with work as tmp:
        db = Path(args.db or Path(tmp) / "load.db")
        server = ServerProcess(db, headroom, args.max_heavy, args.retry_after, admin_key)
        health: dict[str, Any] = {"checks": 0, "failed": 0, "max_ms": 0.0,
                                  "uncharged": {"bytes": 0, "rss": 0, "used": 0}}
        rss = {"peak": 0}
        stop = threading.Event()
        watchers = [threading.Thread(target=_health, args=(server, stop, health), daemon=True),
                    threading.Thread(target=_rss, args=(server, stop, rss), daemon=True)]
        for w in watchers:
            w.start()
        try:
            with httpx.Client(base_url=server.url, timeout=60,
                              headers={"authorization": f"Bearer {admin_key}"}) as admin:
                for t in tenants:
                    tid = admin.post("/v1/admin/tenants", json={"name": t.name}).json()["tenant_id"]
                    t.token = admin.post(f"/v1/admin/tenants/{tid}/api-keys").json()["token"]
            rng = np.random.default_rng(args.seed)
            for t in tenants:  # set-up: register (proof of possession) and enrol a few subjects per tenant
                with httpx.Client(base_url=server.url, timeout=600, headers={"x-api-key": t.token}) as http:
                    _register(http, t, params_json, stats, deadline)
                    for j in range(args.subjects):
                        _enrol(http, t, f"{t.name}-seed-{j}", _embedding(rng), level, stats, deadline)
            setup_requests = stats.requests
            stats = Stats()  # the load phase is measured on its own
            remaining = [args.requests]
            lock = threading.Lock()
            load_start = time.monotonic()
            threads = [threading.Thread(target=_client, args=(server.url, tenants[c % len(tenants)], args.seed + c + 1,
                                                              stats, remaining, lock, deadline, level))
                       for c in range(args.clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            load_s = time.monotonic() - load_start
            alive = server.proc.poll() is None
            memory = httpx.get(server.url + "/v1/health", timeout=10).json().get("memory", {})
            hwm = server.status("VmHWM")
            lost_before_kill = _lost(server.url, tenants)
            score_error = _check_scores(server.url, tenants, level)
        finally:
            stop.set()
            for w in watchers:
                w.join(5)
        server.kill()  # kill -9, then a fresh process on the same database: everything acknowledged is there
        restarted = ServerProcess(db, headroom, args.max_heavy, args.retry_after, admin_key)
        try:
            lost_after_restart = _lost(restarted.url, tenants)
        finally:
            restarted.stop()
    lat = [x for v in stats.latencies.values() for x in v]
    budget_limit = int(memory.get("limit", 0))
    report = {
        "backend": args.backend,
        "params": params_json,
        "tenants": args.tenants,
        "clients": args.clients,
        "setup_requests": setup_requests,
        "requests": stats.requests,
        "ok": sum(n for s, n in stats.statuses.items() if s < 400),
        "status_counts": {str(k): v for k, v in sorted(stats.statuses.items())},
        "503s": stats.statuses.get(503, 0),
        "errors": stats.errors[:20],
        "server_alive": alive,
        "health": {**health, "max_ms": round(health["max_ms"], 1)},
        "acknowledged_enrolments": sum(len(t.acked) for t in tenants),
        "lost": lost_before_kill,
        "lost_after_kill9_restart": lost_after_restart,
        "max_score_error": score_error,
        "memory_budget_bytes": budget_limit,
        "budget_baseline_bytes": int(memory.get("baseline", 0)),
        "key_set_charge_bytes": per_key_set,
        "budget_peak_reserved_bytes": int(memory.get("peak", 0)),
        "peak_rss_bytes": max(rss["peak"], hwm),
        "peak_rss_under_budget": max(rss["peak"], hwm) < budget_limit,
        "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95),
                       **{op: {"p50": _pct(v, 50), "p95": _pct(v, 95), "n": len(v)}
                          for op, v in sorted(stats.latencies.items())}},
        "load_seconds": round(load_s, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="(internal) the server process")
    s.add_argument("--db", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--headroom", type=int, required=True)
    s.add_argument("--max-heavy", type=int, default=1)
    s.add_argument("--retry-after", type=int, default=1)
    m = sub.add_parser("measure-keys", help="loaded / stored bytes of one key set (KEY_LOAD_FACTOR)")
    m.add_argument("--keys-dir", default=None, help="(internal) the saved keys to load")
    p.add_argument("--backend", default="simulator", choices=("simulator", "openfhe", "desilofhe"))
    p.add_argument("--log-ring", type=int, default=12)
    p.add_argument("--levels", type=int, default=24,
                   help="CKKS levels (openfhe: the smallest secure dnum); 0: the product's default parameters")
    p.add_argument("--tenants", type=int, default=4)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--subjects", type=int, default=3, help="subjects enrolled per tenant before the load")
    p.add_argument("--requests", type=int, default=400, help="requests in the load phase, all clients together")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds; every loop stops by then")
    p.add_argument("--headroom", type=int, default=0,
                   help="memory budget above the server's start-up RSS, bytes (default: ~3 key sets)")
    p.add_argument("--max-heavy", type=int, default=1)
    p.add_argument("--retry-after", type=int, default=1, help="the server's Retry-After, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the report here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.cmd == "serve":
        return serve(args)
    if args.cmd == "measure-keys":
        return measure_keys(args)
    report = run(args)
    print(json.dumps(report, indent=2))
    ok = (report["server_alive"] and report["health"]["failed"] == 0 and not report["errors"] and report["lost"] == 0
          and report["lost_after_kill9_restart"] == 0 and report["peak_rss_under_budget"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
