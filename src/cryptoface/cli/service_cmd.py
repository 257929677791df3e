"""``cryptoface keygen | serve | enroll | verify | identify | demo``: the client and server roles."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptoface.errors import CryptoFaceError

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


def _default_backend() -> str:
    from cryptoface.backends import available_backends

    # OpenFHE is the faster backend for the engine's plaintext multiply-accumulates (see README).
    have = available_backends()
    return next((b for b in ("openfhe", "desilofhe") if b in have), "simulator")


def _label(backend: str) -> str:
    return "NOT ENCRYPTED (simulator)" if backend == "simulator" else f"CKKS encryption ({backend})"


BUNDLED_MODEL = SAMPLES.parent / "cryptofacenet4.npz"


def _load_model(path: Path | None, resolution: int = 64) -> Any:
    """The given model file, else the bundled CryptoFaceNet4, else a random model (meaningless decisions)."""
    from cryptoface.model.file import load_model

    if path is not None:
        return load_model(path)
    if BUNDLED_MODEL.is_file() and resolution == 64:
        return load_model(BUNDLED_MODEL)
    from cryptoface.model.random import random_model

    print("warning: no model file; using a RANDOM model, decisions are meaningless")
    return random_model(resolution)


def register(sub: Any) -> None:
    p = sub.add_parser("keygen", help="client: make a key set (secret key stays in --home, mode 0600)")
    p.add_argument("--home", type=Path, default=None, help="key folder (default $CRYPTOFACE_HOME or ~/.cryptoface)")
    p.add_argument("--backend", default=None,
                   help="simulator | desilofhe | openfhe (default: the fastest installed; keys are saved for "
                        "simulator and desilofhe only so far)")
    p.add_argument("--log-ring", type=int, default=16)
    p.add_argument("--levels", type=int, default=None,
                   help="CKKS levels (default: the engine's network levels + matching levels for --resolution)")
    p.add_argument("--stride", type=int, default=1, help="template layout stride of the engine")
    p.add_argument("--resolution", type=int, default=64, help="model input resolution (engine rotation keys)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("serve", help="server: run the matching HTTP server (public keys only)")
    p.add_argument("--db", type=Path, required=True, help="SQLite file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", type=Path, default=None, help="fused model file (enables enrolment from images)")
    p.add_argument("--threshold", type=float, default=None, help="cosine threshold (default: model's, else 0.23)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS|local",
                   help="run inference as patch-parallel units and shard 1:N over Ray actors: 'auto' joins the running "
                        "cluster, an address joins that one, 'local' starts one here (pip install 'cryptoface[ray]')")
    p.add_argument("--ray-workers", type=int, default=2, help="Ray actors (one CPU each) with --ray")
    p.set_defaults(func=cmd_serve)

    for name, helptext in (("enroll", "enrol NAME from photos"), ("verify", "verify a photo against NAME")):
        p = sub.add_parser(name, help=f"client: {helptext}")
        p.add_argument("name")
        p.add_argument("photos", nargs="+" if name == "enroll" else 1, type=Path)
        _client_args(p)
        p.set_defaults(func=cmd_enroll if name == "enroll" else cmd_verify)
    p = sub.add_parser("identify", help="client: find who a photo shows among the enrolled subjects")
    p.add_argument("photos", nargs=1, type=Path)
    _client_args(p)
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("demo", help="everything in one process on the bundled sample faces")
    p.add_argument("--backend", default=None, help="default: desilofhe if installed, else simulator")
    p.add_argument("--model", type=Path, default=None, help="fused model file (default: the bundled CryptoFaceNet4)")
    p.add_argument("--mode", choices=("score", "decision"), default="score")
    p.set_defaults(func=cmd_demo)


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--home", type=Path, default=None)
    p.add_argument("--mode", choices=("score", "decision"), default="score")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--packing", choices=("monolithic", "units"), default="monolithic",
                   help="image packing: the model's plan, or Net4-plan units for a patch-parallel (--ray) server")
    p.add_argument("--standin", action="store_true", help="TESTING ONLY: encrypt a clear embedding (no engine)")
    p.add_argument("--model", type=Path, default=None, help="model for --standin (default: random)")


def cmd_keygen(args: argparse.Namespace) -> int:
    from cryptoface.client import ClientKeys

    backend = args.backend or _default_backend()
    print(f"generating a {backend} key set: {_label(backend)}")
    t = time.perf_counter()
    from dataclasses import replace

    from cryptoface.engine.params import default_parameters

    params = default_parameters(args.resolution)
    if args.levels is not None or args.log_ring != params.log_ring:
        params = replace(params, log_ring=args.log_ring, levels=args.levels or params.levels)
    keys = ClientKeys.generate(
        backend,
        params,
        stride=args.stride,
        resolution=args.resolution,
    )
    root = keys.save(args.home)
    print(
        f"key id {keys.key_id}; {len(keys.backend.rotation_steps())} rotation keys; saved to {root} "
        f"({time.perf_counter() - t:.1f} s)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cryptoface.match.threshold import threshold_from_model_file
    from cryptoface.service import create_app
    from cryptoface.store import SQLiteStore

    model = None
    model_id = "none"
    if args.model is not None:
        from cryptoface.model.file import load_model

        model = load_model(args.model)
        model_id = args.model.name
    tau = args.threshold if args.threshold is not None else threshold_from_model_file(args.model)
    executor = None
    if args.ray is not None:
        from cryptoface.engine.executor import RayExecutor

        address = None if args.ray == "local" else args.ray
        init = {"num_cpus": args.ray_workers} if address is None else {}
        executor = RayExecutor(args.ray_workers, address=address, init_kwargs=init)
        print(f"Ray executor: {args.ray_workers} actors ({args.ray}); the SQLite store stays the source of truth")
    app = create_app(SQLiteStore(args.db), model=model, model_id=model_id, threshold=tau, executor=executor)
    print(f"serving {args.db} on http://{args.host}:{args.port} (threshold {tau}); OpenAPI at /docs")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        if executor is not None:
            executor.close()
    return 0


def _probes(args: argparse.Namespace, client: Any) -> list[dict[str, Any]]:
    from cryptoface.client.photos import STANDIN_LABEL, encrypt_photo, standin_template

    if args.standin:
        print(STANDIN_LABEL)
        model = _load_model(args.model, args.resolution)
        return [client.template_probe(standin_template(client.keys, model, p)) for p in args.photos]
    packing = getattr(args, "packing", "monolithic")
    return [client.image_probe(encrypt_photo(client.keys, p, args.resolution, packing), args.resolution, packing)
            for p in args.photos]


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    from cryptoface.client import ClientKeys, CryptoFaceClient

    keys = ClientKeys.load(args.home)
    with CryptoFaceClient(args.server, keys) as client:
        client.register()
        yield client


def cmd_enroll(args: argparse.Namespace) -> int:
    with _client(args) as c:
        ids = c.enroll(args.name, _probes(args, c))
    print(f"enrolled {args.name}: {len(ids)} template(s)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.verify(args.name, _probes(args, c)[0], mode=args.mode)
    detail = f"score {r.score:.4f} vs threshold {r.threshold}" if r.mode == "score" else "decision only"
    print(f"{'ACCEPT' if r.accepted else 'REJECT'} {args.name} ({detail})")
    return 0 if r.accepted else 1


def cmd_identify(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.identify(_probes(args, c)[0], mode=args.mode)
    print(f"identified: {r.subject or 'unknown'}" + (f" (score {r.score:.4f})" if r.score is not None else ""))
    return 0 if r.subject else 1


# Seconds per encrypted Net4 inference in the demo (inference + server enrolment/matching work) on this 2-CPU
# machine kind, a rough guide: OpenFHE from its 272 s bench with two engine threads (2026-11-27) plus the
# matching work; desilofhe from its 878 s one-engine-thread bench (an upper bound: two threads not measured).
DEMO_SECONDS_PER_INFERENCE = {"openfhe": 300, "desilofhe": 900, "simulator": 15}


def cmd_demo(args: argparse.Namespace) -> int:
    """Enrol two people, verify a genuine and an impostor probe, identify: four encrypted inferences."""
    from tqdm import tqdm

    from cryptoface.client import ClientKeys
    from cryptoface.client.http import IdentifyResult, VerifyResult
    from cryptoface.client.photos import encrypt_photo
    from cryptoface.engine.params import default_parameters
    from cryptoface.match.poly import inverse_sqrt_series
    from cryptoface.match.threshold import threshold_from_metadata
    from cryptoface.service.core import MatchService, params_to_json
    from cryptoface.store import SQLiteStore

    backend = args.backend or _default_backend()
    model = _load_model(args.model)
    params = default_parameters(model.resolution)
    per = DEMO_SECONDS_PER_INFERENCE.get(backend, 600)
    print(f"CryptoFace demo - backend {backend}: {_label(backend)}")
    print(f"CKKS N = 2^{params.log_ring}, {params.levels} levels, log2 QP ~ {params.log_qp} <= 1772 (128-bit), "
          f"model {model.architecture} {model.resolution}x{model.resolution}")
    print(f"expected time: about {4 * per / 60 + 2:.0f} minutes (4 encrypted inferences of ~{per / 60:.0f} min each "
          "on 2 CPUs, plus key generation)")
    photos = {"obama": ["obama3.jpg", "obama4.jpg"], "chirac": ["chirac1.jpg", "chirac3.jpg"]}
    missing = [f for fs in photos.values() for f in fs if not (SAMPLES / f).is_file()]
    if missing:
        raise CryptoFaceError(f"sample faces missing under {SAMPLES}: {missing}")
    timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        timings.append((name, time.perf_counter() - t))
        print(f"  {name}: {timings[-1][1]:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "demo.db")
        service = MatchService(store, model=model, threshold=threshold_from_metadata(model.metadata), progress=True)
        with step("client: key generation (secret key stays here)"):
            keys = ClientKeys.generate(backend, params, resolution=model.resolution)
        with step("server: registers the public and evaluation keys"):
            key_id = service.register_keys(backend, params_to_json(params), keys.evaluation_keys)
        be = keys.backend
        inverse_sqrt_series()  # fitted once per process

        templates: dict[str, dict[str, Any]] = {}
        for f in tqdm([f for fs in photos.values() for f in fs], desc="photos", unit="photo"):
            with step(f"client: align + encrypt {f}"):
                images = [be.serialize(ct) for ct in encrypt_photo(keys, SAMPLES / f, model.resolution)]
            with step(f"server: encrypted inference on {f}"):
                templates[f] = service.infer(key_id, {"images": images, "resolution": model.resolution})
        for name, fs in photos.items():
            with step(f"server: enrol {name} ({fs[0]}): normalise under encryption, store"):
                service.enroll(key_id, name, [templates[fs[0]]])
        genuine, impostor = templates[photos["obama"][1]], templates[photos["chirac"][1]]
        for label, probe in (("genuine", genuine), ("impostor", impostor)):
            with step(f"server: verify 'obama' with the {label} probe"):
                out = service.verify(key_id, "obama", probe, mode=args.mode)
            values = [float(be.decrypt(be.deserialize(o))[0]) for o in out]
            cut = service.threshold if args.mode == "score" else 0.0
            r = VerifyResult("obama", max(values) > cut, args.mode, values, service.threshold)
            shown = f"score {r.score:.4f}" if r.mode == "score" else f"sign value {values[0]:+.3f}"
            print(f"    {label}: {'ACCEPT' if r.accepted else 'REJECT'} ({shown}, threshold {service.threshold:.4f})")
        with step("server: identify, reusing the genuine probe's encrypted template (no new inference)"):
            chunks = service.identify(key_id, genuine, mode="score")
        best: dict[str, float] = {}
        for ct, slots, names in chunks:
            v = be.decrypt(be.deserialize(ct))
            for slot, n in zip(slots, names, strict=True):
                best[n] = max(best.get(n, -1.0), float(v[slot]))
        name, score = max(best.items(), key=lambda kv: kv[1])
        ident = IdentifyResult(name if score > service.threshold else None, score, "score", best)
        print(
            f"    identify: {ident.subject or 'unknown'} (scores {', '.join(f'{k} {v:.3f}' for k, v in best.items())})"
        )
        store.close()
    print(f"total {sum(t for _, t in timings):.1f} s; backend {backend}: {_label(backend)}")
    return 0
