"""``cryptoface keygen | serve | login | enroll | verify | identify | subjects | delete | rotate-keys | audit |
demo``: parse, call the library, print."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptoface.cli.device import add_device_arguments, check_device
from cryptoface.errors import CryptoFaceError
from cryptoface.params import DEFAULT_PROTOCOL, PROTOCOLS


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
                   help="CKKS levels (default: the levels the server evaluates: Net4's trunk, 21, the client doing the "
                        "tail; 23 for Net9/16; plus matching's 7 with --protocol one-round); "
                        "with --log-ring, the smallest secure key-switching digit count is chosen")
    p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                   help="refresh (default): the client finishes and normalises each template and encrypts it afresh, "
                        "so the keys carry the network's levels only (Net4: its trunk's); one-round: the server "
                        "normalises, the keys carry matching's levels too (the HE benchmark's one-round workload)")
    p.add_argument("--stride", type=int, default=1, help="template layout stride of the engine")
    p.add_argument("--no-match-ring", dest="match_ring", action="store_false",
                   help="no matching ring: refreshed templates are stored and matched in the network's ring "
                        "(3.15 MB a template instead of 394 KB, 1:N slower); one-round never has one")
    p.add_argument("--threads", type=int, default=1, help="backend threads for key generation")
    p.add_argument("--force", action="store_true",
                   help="replace the key sets already in --home (they stay registered on the server: run "
                        "'cryptoface delete keyset' without --key-id first, or use 'cryptoface rotate-keys')")
    p.add_argument("--public-out", type=Path, default=None, metavar="DIR",
                   help="also write a public key folder (public, relinearisation and rotation keys, no secret key) "
                        "for a server process to load")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("serve", help="server: run the matching HTTP server (public keys only)")
    p.add_argument("--db", required=True,
                   help="SQLite file, or a PostgreSQL URL postgresql://USER@HOST/DB (several servers, one database)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate (chain): serve HTTPS")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="admin credential (mode 0600), else $CRYPTOFACE_ADMIN_KEY; without one admin routes are off")
    p.add_argument("--model", type=Path, default=None, help="fused model file (default: the bundled CryptoFaceNet4)")
    p.add_argument("--no-model", action="store_true", help="serve encrypted templates only (no encrypted inference)")
    p.add_argument("--threshold", type=float, default=None,
                   help="tau for decision-only matching (default: the model card's)")
    p.add_argument("--max-heavy", type=int, default=None,
                   help="concurrent heavy requests (inference, enrolment, matching, key upload); more get 503 + "
                        "Retry-After (default: the server's, 1 on 2 CPUs)")
    p.add_argument("--memory-budget", default=None, metavar="BYTES",
                   help="bytes for loaded key sets and heavy requests, e.g. 16G (default: 70%% of MemTotal)")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS|local",
                   help="run inference as patch-parallel units and shard 1:N over Ray actors: 'auto' joins the running "
                        "cluster, an address joins that one, 'local' starts one here (pip install 'cryptoface[ray]')")
    p.add_argument("--ray-workers", type=int, default=2, help="Ray actors (one CPU each) with --ray")
    add_device_arguments(p)
    p.add_argument("--plaintext-budget", default=None, metavar="BYTES",
                   help="with --device gpu: bytes of full weight plaintexts kept on the GPU, e.g. 80G (default: 60 %% "
                        "of its memory; the rest are kept in compact form)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("login", help="client: save the server URL and this tenant's API key in <home>/server.json")
    p.add_argument("--server", required=True, help="server URL, https://HOST:PORT")
    p.add_argument("--api-key", required=True, help="the API key (cf_...); '-' reads it from standard input")
    p.add_argument("--ca-cert", type=Path, default=None, help="PEM certificate to trust for this server")
    p.add_argument("--home", type=Path, default=None, help="key folder (default $CRYPTOFACE_HOME or ~/.cryptoface)")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow the API key over plain http:// to another machine (a network you trust)")
    p.add_argument("--no-check", action="store_true", help="save without asking the server whether the key works")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("enroll", help="client: enrol NAME from photos (--add: more templates for an enrolled NAME)")
    p.add_argument("name")
    p.add_argument("photos", nargs="+", type=Path)
    p.add_argument("--add", action="store_true", help="add templates to an enrolled subject instead of creating it")
    p.add_argument("--decision-ready", action="store_true",
                   help="refresh protocol: store templates with the levels decision-only matching needs (larger)")
    _client_args(p)
    p.set_defaults(func=cmd_enroll)
    p = sub.add_parser("verify", help="client: verify a photo against NAME")
    p.add_argument("name")
    p.add_argument("photo", type=Path)
    _client_args(p)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("compare", help="client: are two photos the same person? (nothing is enrolled)")
    p.add_argument("photo_a", type=Path)
    p.add_argument("photo_b", type=Path)
    _client_args(p)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("identify", help="client: find who a photo shows among the enrolled subjects")
    p.add_argument("photo", type=Path)
    _client_args(p)
    p.set_defaults(func=cmd_identify)
    p = sub.add_parser("subjects", help="client: list the subjects enrolled under this key set (ids, templates)")
    _connection_args(p)
    p.set_defaults(func=cmd_subjects)

    p = sub.add_parser("delete", help="client: erase a subject, a template or the whole key set on the server")
    what = p.add_subparsers(dest="what", required=True)
    q = what.add_parser("subject", help="erase NAME and all its templates")
    q.add_argument("name")
    _connection_args(q)
    q.set_defaults(func=cmd_delete_subject)
    q = what.add_parser("template", help="erase one template (see 'cryptoface subjects' for ids)")
    q.add_argument("template_id", type=int)
    _connection_args(q)
    q.set_defaults(func=cmd_delete_template)
    q = what.add_parser("keyset", help="erase this key set (keys, subjects, templates) on the server")
    q.add_argument("--key-id", default=None, help="another key set of this tenant (e.g. one left by a rotation)")
    _connection_args(q)
    q.set_defaults(func=cmd_delete_keyset)

    p = sub.add_parser("rotate-keys", help="client: new key set, re-enrol from photos, then erase the old key set")
    p.add_argument("--enroll", action="append", required=True, metavar="NAME=PHOTO",
                   help="re-enrol NAME from PHOTO (split at the first '='); repeat for more photos and subjects")
    p.add_argument("--drop-missing", action="store_true",
                   help="erase subjects of the old key set that are not re-enrolled (refused otherwise)")
    p.add_argument("--threads", type=int, default=1, help="backend threads for key generation")
    _client_args(p)
    p.set_defaults(func=cmd_rotate_keys)

    p = sub.add_parser("audit", help="client: this tenant's audit log (ids and actions, no names)")
    p.add_argument("--after", type=int, default=0, help="only rows after this id")
    _connection_args(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("demo", help="everything in one process on the bundled sample faces")
    p.add_argument("--backend", default=None, help="default: openfhe, else desilofhe, else simulator")
    p.add_argument("--model", type=Path, default=None, help="fused model file (default: the bundled CryptoFaceNet4)")
    p.add_argument("--mode", choices=("score", "decision"), default="score")
    p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                   help="refresh (default, faster) or one-round (the server normalises)")
    add_device_arguments(p)
    p.set_defaults(func=cmd_demo)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=None,
                   help="server URL (default $CRYPTOFACE_SERVER, else the one saved by 'cryptoface login', else "
                        "http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=None, help="API key (default $CRYPTOFACE_API_KEY, else the saved one)")
    p.add_argument("--ca-cert", type=Path, default=None,
                   help="PEM certificate to trust (default $CRYPTOFACE_CA_CERT, else the saved one, else the system's)")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow the API key over plain http:// to another machine (a network you trust)")
    p.add_argument("--home", type=Path, default=None, help="key folder (default $CRYPTOFACE_HOME or ~/.cryptoface)")
    p.add_argument("--threshold", type=float, default=None, help="the client's tau (default: the model card's)")


def _client_args(p: argparse.ArgumentParser) -> None:
    _connection_args(p)
    p.add_argument("--mode", choices=("score", "decision"), default="score")
    p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                   help="refresh (default): the server's raw template comes back, is normalised here and encrypted "
                        "afresh for matching (one more round trip, fewer levels); one-round: the server normalises")
    p.add_argument("--packing", choices=("monolithic", "units"), default="monolithic",
                   help="image packing: the model's plan, or Net4-plan units for a patch-parallel (--ray) server")
    p.add_argument("--standin", action="store_true", help="TESTING ONLY: encrypt a clear embedding (no engine)")
    p.add_argument("--model", type=Path, default=None, help="model for --standin (default: the bundled one)")


def cmd_keygen(args: argparse.Namespace) -> int:
    from cryptoface.backends import default_backend
    from cryptoface.client import ClientKeys
    from cryptoface.demo import backend_label
    from cryptoface.params import LOG_RING, REFRESH_SCALE_BITS, SCALE_BITS, default_parameters, secure_parameters

    backend = args.backend or default_backend()
    resolution = None if args.template_only else args.resolution
    if args.levels is None and args.log_ring is None:
        params = default_parameters(args.resolution, protocol=args.protocol)
    else:
        levels = args.levels or default_parameters(args.resolution, protocol=args.protocol).levels
        # the default ring keeps the protocol's scale (a --levels 23 refresh key set is the whole-network one)
        refresh_ring = args.log_ring is None and args.protocol == "refresh"
        params = secure_parameters(levels, args.log_ring or LOG_RING,
                                   scale_bits=REFRESH_SCALE_BITS if refresh_ring else SCALE_BITS)
    print(f"generating a {backend} key set: {backend_label(backend)}; N = 2^{params.log_ring}, {params.levels} levels")
    t = time.perf_counter()
    ring = args.match_ring and args.protocol == "refresh"
    keys = ClientKeys.generate(backend, params, stride=args.stride, resolution=resolution, match_ring=ring,
                               threads=args.threads)
    root = keys.save(args.home, overwrite=args.force, public_out=args.public_out)
    print(f"key id {keys.key_id}; {len(keys.backend.rotation_steps())} rotation keys "
          f"({keys.evaluation_key_bytes() / 1e9:.2f} GB of evaluation keys); saved to {root} "
          f"({time.perf_counter() - t:.1f} s)")
    if keys.match is not None:
        m = keys.match
        print(f"matching ring: key id {m.key_id}; N = 2^{m.params.log_ring}, {m.params.levels} levels, "
              f"{m.evaluation_key_bytes() / 1e6:.1f} MB of evaluation keys")
    if args.public_out is not None:
        print(f"public key folder (no secret key): {args.public_out}")
    return 0


def _db_label(db: str) -> str:
    """``--db`` as printed: a PostgreSQL URL without its password."""
    from cryptoface.store import POSTGRES_SCHEMES

    if not db.startswith(POSTGRES_SCHEMES):
        return db
    from urllib.parse import urlsplit

    u = urlsplit(db)
    host = u.hostname or ""
    user = f"{u.username}@" if u.username else ""
    return f"{u.scheme}://{user}{host}{f':{u.port}' if u.port else ''}{u.path}"


def parse_bytes(text: str) -> int:
    """``16G``, ``512M``, ``1.5T`` or a plain byte count, as bytes (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError as exc:
        raise CryptoFaceError(f"{text!r} is not a byte count (e.g. 16G, 512M, 1000000)") from exc


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cryptoface.match.threshold import threshold_from_metadata
    from cryptoface.service import create_app
    from cryptoface.service.auth import load_admin_key
    from cryptoface.store import open_store

    if (args.tls_cert is None) != (args.tls_key is None):
        raise CryptoFaceError("give both --tls-cert and --tls-key (or neither)")
    for f in (args.tls_cert, args.tls_key):
        if f is not None and not f.is_file():
            raise CryptoFaceError(f"{f} does not exist")
    admin_key = load_admin_key(args.admin_key_file)
    limits: dict[str, Any] = {}
    check_device(args.device)
    if args.device != "cpu":
        limits["device"] = args.device
        if args.plaintext_budget is not None:
            limits["plaintext_budget"] = parse_bytes(args.plaintext_budget)
    model = None if args.no_model else _load_model(args.model)
    model_id = "none" if model is None else (args.model.name if args.model else "cryptofacenet4.npz")
    tau = args.threshold if args.threshold is not None else threshold_from_metadata(
        None if model is None else model.metadata)
    if args.max_heavy is not None:
        limits["max_heavy"] = args.max_heavy
    if args.memory_budget is not None:
        limits["memory_budget"] = parse_bytes(args.memory_budget)
    executor = None
    if args.ray is not None:
        from cryptoface.engine.executor import RayExecutor

        address = None if args.ray == "local" else args.ray
        init = {"num_cpus": args.ray_workers} if address is None else {}
        executor = RayExecutor(args.ray_workers, address=address, init_kwargs=init)
        print(f"Ray executor: {args.ray_workers} actors ({args.ray}); the store stays the source of truth")
    store = open_store(args.db)
    app = create_app(store, model=model, model_id=model_id, threshold=tau, executor=executor, admin_key=admin_key,
                     observe_rss=True, **limits)
    what = "no model: encrypted templates only" if model is None else f"model {model_id} ({model.architecture})"
    scheme = "https" if args.tls_cert else "http"
    print(f"serving {_db_label(args.db)} on {scheme}://{args.host}:{args.port} ({what}); OpenAPI at /docs")
    print("admin routes: " + ("on" if admin_key else "off (no --admin-key-file or $CRYPTOFACE_ADMIN_KEY)"))
    if scheme == "http" and args.host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: plain HTTP on a network address: API keys and ciphertexts travel unencrypted by TLS; "
              "use --tls-cert/--tls-key", file=sys.stderr)
    tls = {} if args.tls_cert is None else {"ssl_certfile": str(args.tls_cert), "ssl_keyfile": str(args.tls_key)}
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", **tls)
    finally:
        if executor is not None:
            executor.close()
        store.close()
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from cryptoface.client.http import HTTPTransport
    from cryptoface.client.settings import ServerSettings, api_key_id, write_server_file

    token = args.api_key
    if token == "-":
        token = (sys.stdin.readline() if not sys.stdin.isatty() else getpass.getpass("API key: ")).strip()
    if not token:
        raise CryptoFaceError("empty API key")
    settings = ServerSettings(args.server.rstrip("/"), token, args.ca_cert)
    if not args.no_check:
        t = HTTPTransport(settings.server, api_key=token, ca_cert=args.ca_cert, insecure_http=args.insecure_http,
                          timeout=60.0)
        try:
            n = len(t.key_sets())  # any tenant route: 401 for a wrong key
        finally:
            t.close()
        print(f"{settings.server} accepts API key {api_key_id(token) or '(unnamed)'}: {n} key set(s) registered")
    path = write_server_file(settings, args.home)
    print(f"saved to {path} (mode 0600); enroll, verify, identify, delete now use it")
    return 0


def _probe(args: argparse.Namespace, client: Any, photo: Any) -> Any:
    """The request probe for one photo: encrypted image (the protocol) or a labelled stand-in template."""
    if args.standin:
        from cryptoface.client.photos import STANDIN_LABEL, standin_template

        print(STANDIN_LABEL)
        return client.template_probe(standin_template(client.keys, _load_model(args.model), photo))
    probe = client.encrypt_photo(photo, packing=args.packing)
    print(f"{Path(photo).name}: aligned and encrypted ({sum(len(c) for c in probe.images) / 1e6:.1f} MB); the "
          "server's encrypted inference takes minutes")
    return probe


class _JobBar:
    """The server's inference progress as a terminal bar (one per job; the CLI waits on one job at a time)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.job_id = ""

    def __call__(self, job: Any) -> None:
        from tqdm import tqdm

        if job.job_id != self.job_id:
            self.close()
            self.job_id = job.job_id
        if self.bar is None and job.total:
            self.bar = tqdm(total=job.total, desc="server: encrypted inference", unit="layer", file=sys.stderr)
        if self.bar is not None:
            self.bar.set_postfix_str(job.step or job.state)
            self.bar.update(job.done - self.bar.n)
            if job.state in ("done", "failed", "cancelled"):
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _connect(args: argparse.Namespace) -> Any:
    from cryptoface.client import Client

    return Client.connect(args.server, args.home, api_key=args.api_key, ca_cert=args.ca_cert,
                          insecure_http=args.insecure_http, threshold=args.threshold,
                          protocol=getattr(args, "protocol", DEFAULT_PROTOCOL), progress=_JobBar())


def _check_name(name: str) -> str:
    """The name's NFC form, checked before any photo is encrypted."""
    from cryptoface.names import validate_name

    return validate_name(name, "subject name")


def cmd_enroll(args: argparse.Namespace) -> int:
    name = _check_name(args.name)
    with _connect(args) as c:
        existing = c.find_subject(name)  # refused before any photo is encrypted, not after minutes of inference
        if args.add and existing is None:
            raise CryptoFaceError(f"no subject {name!r} is enrolled under this key set; enrol it without --add")
        if not args.add and existing is not None:
            raise CryptoFaceError(f"{name!r} is enrolled already; use --add to add templates to it")
        s = c.enroll(name, [_probe(args, c, p) for p in args.photos], add=args.add,
                     decision_ready=args.decision_ready)
    print(f"{'added to' if args.add else 'enrolled'} {s.name}: subject {s.subject_id}, "
          f"{len(s.template_ids)} template(s) {list(s.template_ids)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    name = _check_name(args.name)
    with _connect(args) as c:
        if c.find_subject(name) is None:  # before the photo's encryption and the server's inference
            raise CryptoFaceError(f"no subject {name!r} is enrolled under this key set")
        r = c.verify(name, _probe(args, c, args.photo), mode=args.mode)
    detail = f"score {r.score:.4f} vs threshold {r.threshold:.4f}" if r.mode == "score" else "decision only"
    print(f"{'ACCEPT' if r.accepted else 'REJECT'} {name} ({detail})")
    return 0 if r.accepted else 1


def cmd_compare(args: argparse.Namespace) -> int:
    if args.mode != "score":
        raise CryptoFaceError("compare answers in score mode only (the client decides with its own threshold)")
    with _connect(args) as c:
        r = c.compare(_probe(args, c, args.photo_a), _probe(args, c, args.photo_b))
    print(f"{'SAME' if r.same else 'DIFFERENT'} (score {r.score:.4f} vs threshold {r.threshold:.4f})")
    return 0 if r.same else 1


def cmd_identify(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        r = c.identify(_probe(args, c, args.photo), mode=args.mode)
    print(f"identified: {r.subject or 'unknown'}" + (f" (score {r.score:.4f})" if r.score is not None else ""))
    return 0 if r.subject else 1


def cmd_subjects(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        subjects = c.subjects()
        print(f"key set {c.key_id[:12]}: {len(subjects)} subject(s)")
    for s in subjects:
        print(f"{s.subject_id}\t{s.name}\ttemplates {', '.join(map(str, s.template_ids))}")
    return 0


def cmd_delete_subject(args: argparse.Namespace) -> int:
    name = _check_name(args.name)
    with _connect(args) as c:
        s = c.delete_subject(name)
    print(f"erased subject {s.name} ({s.subject_id}) and its {len(s.template_ids)} template(s)")
    return 0


def cmd_delete_template(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        c.delete_template(args.template_id)
    print(f"erased template {args.template_id}")
    return 0


def cmd_delete_keyset(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        own = [k.key_id for k in c.key_sets()]
        if args.key_id is None or args.key_id in own:  # this client's: the network's and the matching ring's
            c.delete_key_set()
            ids, note = own, " (the local keys stay; the next enrolment registers them again)"
        else:
            c.delete_key_set(args.key_id)
            ids, note = [args.key_id], ""
    for key_id in ids:
        print(f"erased key set {key_id[:12]} on the server with its keys, subjects and templates{note}")
    return 0


def _enrolments(specs: Sequence[str]) -> dict[str, list[Path]]:
    """``NAME=PHOTO`` arguments grouped by name (names checked before any key is made)."""
    out: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, photo = spec.partition("=")
        if not sep or not photo:
            raise CryptoFaceError(f"--enroll {spec!r}: expected NAME=PHOTO")
        if not Path(photo).is_file():
            raise CryptoFaceError(f"--enroll {spec!r}: {photo} does not exist")
        out.setdefault(_check_name(name), []).append(Path(photo))
    return out


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    from cryptoface.client.rotation import rotate_keys

    wanted = _enrolments(args.enroll)
    with _connect(args) as c:
        old = c.key_id
        new, enrolled = rotate_keys(c, wanted, drop_missing=args.drop_missing, threads=args.threads,
                                    make_probe=lambda client, photo: _probe(args, client, photo), say=print)
    print(f"rotated: key set {old[:12]} -> {new.key_id[:12]}; {len(enrolled)} subject(s) re-enrolled")
    return 0


def print_audit(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(r.get("at", 0))))
        ids = {k: r.get(k) for k in ("tenant_id", "key_id", "subject_id", "template_ids") if r.get(k)}
        print(f"{r.get('id')}\t{at}\t{r.get('actor')}\t{r.get('action')}\t" + " ".join(f"{k}={v}" for k, v in
                                                                                    ids.items()))


def cmd_audit(args: argparse.Namespace) -> int:
    from cryptoface.client.http import HTTPTransport
    from cryptoface.client.settings import resolve_settings

    s = resolve_settings(args.server, args.api_key, args.ca_cert, args.home)
    t = HTTPTransport(s.server, api_key=s.api_key, ca_cert=s.ca_cert, insecure_http=args.insecure_http, timeout=60.0)
    try:
        print_audit(t.audit(args.after))
    finally:
        t.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Enrol two people, verify a genuine and an impostor probe, identify: four encrypted inferences."""
    from cryptoface.backends import default_backend
    from cryptoface.demo import run_demo

    backend = args.backend or default_backend()
    check_device(args.device, backend)
    report = run_demo(backend, _load_model(args.model), mode=args.mode, device=args.device, protocol=args.protocol)
    if not report.genuine_accepted or report.impostor_accepted or report.identified != "obama":
        raise CryptoFaceError("the demo's decisions differ from the expected ones (genuine ACCEPT, impostor REJECT, "
                              "identify obama)")
    return 0
