"""``cryptoface keygen | serve | enroll | verify | identify | demo``: parse, call the library, print."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from cryptoface.errors import CryptoFaceError

DEFAULT_SERVER = "http://127.0.0.1:8000"
SERVER_ENV = "CRYPTOFACE_SERVER"


def _load_model(path: Path | None) -> Any:
    """The given fused model file, else the bundled CryptoFaceNet4."""
    from cryptoface.assets import default_model_path
    from cryptoface.model.file import load_model

    return load_model(path or default_model_path())


def register(sub: Any) -> None:
    p = sub.add_parser("keygen", help="client: make a key set (secret key stays in --home, mode 0600)")
    p.add_argument("--home", type=Path, default=None, help="key folder (default $CRYPTOFACE_HOME or ~/.cryptoface)")
    p.add_argument("--backend", default=None, help="simulator | desilofhe | openfhe (default: the fastest installed)")
    p.add_argument("--resolution", type=int, default=64, help="model input resolution (engine rotation keys)")
    p.add_argument("--template-only", action="store_true",
                   help="keys for matching encrypted templates only (no engine rotation keys): tools and tests")
    p.add_argument("--log-ring", type=int, default=None, help="log2 of the ring degree (default 16)")
    p.add_argument("--levels", type=int, default=None,
                   help="CKKS levels (default: the network's levels + matching levels); with --log-ring, the "
                        "smallest secure key-switching digit count is chosen")
    p.add_argument("--stride", type=int, default=1, help="template layout stride of the engine")
    p.add_argument("--threads", type=int, default=1, help="backend threads for key generation")
    p.add_argument("--force", action="store_true", help="replace a key set already in --home")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("serve", help="server: run the matching HTTP server (public keys only)")
    p.add_argument("--db", type=Path, required=True, help="SQLite file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", type=Path, default=None, help="fused model file (default: the bundled CryptoFaceNet4)")
    p.add_argument("--no-model", action="store_true", help="serve encrypted templates only (no encrypted inference)")
    p.add_argument("--threshold", type=float, default=None,
                   help="tau for decision-only matching (default: the model card's)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS|local",
                   help="run inference as patch-parallel units and shard 1:N over Ray actors: 'auto' joins the running "
                        "cluster, an address joins that one, 'local' starts one here (pip install 'cryptoface[ray]')")
    p.add_argument("--ray-workers", type=int, default=2, help="Ray actors (one CPU each) with --ray")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("enroll", help="client: enrol NAME from photos")
    p.add_argument("name")
    p.add_argument("photos", nargs="+", type=Path)
    _client_args(p)
    p.set_defaults(func=cmd_enroll)
    p = sub.add_parser("verify", help="client: verify a photo against NAME")
    p.add_argument("name")
    p.add_argument("photo", type=Path)
    _client_args(p)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("identify", help="client: find who a photo shows among the enrolled subjects")
    p.add_argument("photo", type=Path)
    _client_args(p)
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser("demo", help="everything in one process on the bundled sample faces")
    p.add_argument("--backend", default=None, help="default: openfhe, else desilofhe, else simulator")
    p.add_argument("--model", type=Path, default=None, help="fused model file (default: the bundled CryptoFaceNet4)")
    p.add_argument("--mode", choices=("score", "decision"), default="score")
    p.set_defaults(func=cmd_demo)


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get(SERVER_ENV, DEFAULT_SERVER),
                   help=f"server URL (default ${SERVER_ENV} or {DEFAULT_SERVER})")
    p.add_argument("--home", type=Path, default=None)
    p.add_argument("--mode", choices=("score", "decision"), default="score")
    p.add_argument("--threshold", type=float, default=None, help="the client's tau (default: the model card's)")
    p.add_argument("--packing", choices=("monolithic", "units"), default="monolithic",
                   help="image packing: the model's plan, or Net4-plan units for a patch-parallel (--ray) server")
    p.add_argument("--standin", action="store_true", help="TESTING ONLY: encrypt a clear embedding (no engine)")
    p.add_argument("--model", type=Path, default=None, help="model for --standin (default: the bundled one)")


def cmd_keygen(args: argparse.Namespace) -> int:
    from cryptoface.backends import default_backend
    from cryptoface.client import ClientKeys
    from cryptoface.demo import backend_label
    from cryptoface.params import LOG_RING, default_parameters, secure_parameters

    backend = args.backend or default_backend()
    resolution = None if args.template_only else args.resolution
    if args.levels is None and args.log_ring is None:
        params = default_parameters(args.resolution)
    else:
        levels = args.levels or default_parameters(args.resolution).levels
        params = secure_parameters(levels, args.log_ring or LOG_RING)
    print(f"generating a {backend} key set: {backend_label(backend)}; N = 2^{params.log_ring}, {params.levels} levels")
    t = time.perf_counter()
    keys = ClientKeys.generate(backend, params, stride=args.stride, resolution=resolution, threads=args.threads)
    root = keys.save(args.home, overwrite=args.force)
    print(f"key id {keys.key_id}; {len(keys.backend.rotation_steps())} rotation keys "
          f"({keys.evaluation_key_bytes() / 1e9:.2f} GB of evaluation keys); saved to {root} "
          f"({time.perf_counter() - t:.1f} s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cryptoface.match.threshold import threshold_from_metadata
    from cryptoface.service import create_app
    from cryptoface.store import SQLiteStore

    model = None if args.no_model else _load_model(args.model)
    model_id = "none" if model is None else (args.model.name if args.model else "cryptofacenet4.npz")
    tau = args.threshold if args.threshold is not None else threshold_from_metadata(
        None if model is None else model.metadata)
    executor = None
    if args.ray is not None:
        from cryptoface.engine.executor import RayExecutor

        address = None if args.ray == "local" else args.ray
        init = {"num_cpus": args.ray_workers} if address is None else {}
        executor = RayExecutor(args.ray_workers, address=address, init_kwargs=init)
        print(f"Ray executor: {args.ray_workers} actors ({args.ray}); the SQLite store stays the source of truth")
    app = create_app(SQLiteStore(args.db), model=model, model_id=model_id, threshold=tau, executor=executor)
    what = "no model: encrypted templates only" if model is None else f"model {model_id} ({model.architecture})"
    print(f"serving {args.db} on http://{args.host}:{args.port} ({what}); OpenAPI at /docs")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        if executor is not None:
            executor.close()
    return 0


def _probe(args: argparse.Namespace, client: Any, photo: Path) -> Any:
    """The request probe for one photo: encrypted image (the protocol) or a labelled stand-in template."""
    if args.standin:
        from cryptoface.client.photos import STANDIN_LABEL, standin_template

        print(STANDIN_LABEL)
        return client.template_probe(standin_template(client.keys, _load_model(args.model), photo))
    probe = client.encrypt_photo(photo, packing=args.packing)
    print(f"{photo.name}: aligned and encrypted ({sum(len(c) for c in probe.images) / 1e6:.1f} MB); the server's "
          "encrypted inference takes minutes")
    return probe


def _connect(args: argparse.Namespace) -> Any:
    from cryptoface.client import Client

    return Client.connect(args.server, args.home, threshold=args.threshold)


def cmd_enroll(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        ids = c.enroll(args.name, [_probe(args, c, p) for p in args.photos])
    print(f"enrolled {args.name}: {len(ids)} template(s)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        r = c.verify(args.name, _probe(args, c, args.photo), mode=args.mode)
    detail = f"score {r.score:.4f} vs threshold {r.threshold:.4f}" if r.mode == "score" else "decision only"
    print(f"{'ACCEPT' if r.accepted else 'REJECT'} {args.name} ({detail})")
    return 0 if r.accepted else 1


def cmd_identify(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        r = c.identify(_probe(args, c, args.photo), mode=args.mode)
    print(f"identified: {r.subject or 'unknown'}" + (f" (score {r.score:.4f})" if r.score is not None else ""))
    return 0 if r.subject else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Enrol two people, verify a genuine and an impostor probe, identify: four encrypted inferences."""
    from cryptoface.backends import default_backend
    from cryptoface.demo import run_demo

    report = run_demo(args.backend or default_backend(), _load_model(args.model), mode=args.mode)
    if not report.genuine_accepted or report.impostor_accepted or report.identified != "obama":
        raise CryptoFaceError("the demo's decisions differ from the expected ones (genuine ACCEPT, impostor REJECT, "
                              "identify obama)")
    return 0
