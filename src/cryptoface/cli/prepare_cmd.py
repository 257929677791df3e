"""``cryptoface prepare-model``: write a server's prepared model folder (model, plan, engine caches)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cryptoface.errors import ParameterError
from cryptoface.params import DEFAULT_PROTOCOL, PROTOCOLS


def register(sub: Any) -> None:
    p = sub.add_parser("prepare-model", help="server: write the model with its encrypted-inference plan and caches "
                                             "to a folder that a server process loads quickly")
    p.add_argument("--model", type=Path, default=None, help="fused model file (default: the bundled CryptoFaceNet4)")
    p.add_argument("--out", type=Path, required=True, help="folder to write (replaced if it holds a prepared model)")
    p.add_argument("--backend", default=None,
                   help="backend the folder is for (recorded in the manifest; the plan is the same for every backend)")
    p.add_argument("--params", default=None, metavar="JSON|FILE",
                   help="CKKS parameters: JSON text, a JSON file, or a keyset.json (its 'params')")
    p.add_argument("--public-keys", type=Path, default=None, metavar="DIR",
                   help="take the CKKS parameters from this public key folder (keygen --public-out)")
    p.add_argument("--log-ring", type=int, default=None, help="as keygen: log2 of the ring degree")
    p.add_argument("--levels", type=int, default=None, help="as keygen: CKKS levels")
    p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                   help="as keygen: the default parameters' protocol")
    p.set_defaults(func=cmd_prepare_model)


def _params(args: argparse.Namespace, resolution: int) -> Any:
    """The parameters asked for: --params, else --public-keys, else --log-ring/--levels, else keygen's default."""
    from cryptoface.params import LOG_RING, default_parameters, params_from_json, secure_parameters

    if args.params is not None:
        text = args.params
        if not text.lstrip().startswith("{"):
            try:
                text = Path(text).read_text()
            except OSError as exc:
                raise ParameterError(f"--params {args.params}: not JSON and not a readable file ({exc.strerror})") \
                    from exc
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ParameterError(f"--params is not valid JSON: {exc}") from exc
        if isinstance(raw, dict) and isinstance(raw.get("params"), dict):
            raw = raw["params"]  # a keyset.json
        return params_from_json(json.dumps(raw))
    if args.public_keys is not None:
        from cryptoface.client.keys import PublicKeys

        return PublicKeys.load(args.public_keys).params
    default = default_parameters(resolution, protocol=args.protocol)
    if args.levels is None and args.log_ring is None:
        return default
    return secure_parameters(args.levels or default.levels, args.log_ring or LOG_RING)


def cmd_prepare_model(args: argparse.Namespace) -> int:
    from cryptoface.assets import default_model_path
    from cryptoface.engine.artefact import prepare_model
    from cryptoface.model.file import read_header

    model_path = args.model or default_model_path()
    params = _params(args, int(read_header(model_path)["resolution"]))
    t = time.perf_counter()
    manifest = prepare_model(model_path, params, args.out, backend=args.backend)
    size = sum(f["size"] for f in manifest.files.values())
    print(f"prepared {manifest.model_id} (N = 2^{params.log_ring}, {params.levels} levels, params id "
          f"{manifest.params_id}; plan: {manifest.plan['layers']} steps, {manifest.plan['rotation_keys']} rotation "
          f"keys) in {args.out}: {size / 1e6:.1f} MB, {time.perf_counter() - t:.1f} s")
    return 0
