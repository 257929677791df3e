"""What a benchmark run computes with, from the environment: backend, CKKS parameters, model, engine threads.

Every stage reads the same variables, so the client (keys, encryption) and the server (model artefact, compute)
agree without passing anything but files: ``CRYPTOFACE_BENCH_BACKEND`` (``openfhe`` by default; ``simulator``
for tests, which is not encryption), ``CRYPTOFACE_BENCH_PARAMS`` (a JSON object of CKKS parameters or the path of
a file holding one; default :func:`cryptoface.params.default_parameters` for the model's resolution in the
one-round protocol, 128-bit),
``CRYPTOFACE_BENCH_MODEL`` (a fused model file; default the bundled CryptoFaceNet4) and
``CRYPTOFACE_BENCH_WORKERS`` (engine threads of stage 7; default the engine's own choice).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptoface.backends import BACKENDS
from cryptoface.backends.protocol import CkksParameters
from cryptoface.errors import CryptoFaceError

BACKEND_ENV = "CRYPTOFACE_BENCH_BACKEND"
PARAMS_ENV = "CRYPTOFACE_BENCH_PARAMS"
MODEL_ENV = "CRYPTOFACE_BENCH_MODEL"
WORKERS_ENV = "CRYPTOFACE_BENCH_WORKERS"
DEFAULT_BACKEND = "openfhe"


class SubmissionError(CryptoFaceError):
    """A stage cannot run as asked (missing input of an earlier stage, bad setting, inconsistent files)."""


@dataclass(frozen=True)
class BenchConfig:
    """The settings every stage shares; ``resolution`` is the model's input size (public, from its header)."""

    backend: str
    params: CkksParameters
    model_path: Path
    resolution: int
    workers: int | None


def _params(text: str, resolution: int) -> CkksParameters:
    """Parameters from JSON text or a JSON file; the 128-bit defaults for ``resolution`` when unset."""
    from cryptoface.params import default_parameters, params_from_json

    text = text.strip()
    if not text:
        return default_parameters(resolution, protocol="one-round")  # the workload: encrypt once, decrypt once
    if not text.startswith("{"):
        path = Path(text).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise SubmissionError(f"{PARAMS_ENV}={path}: cannot read it ({exc.strerror}); give a JSON object of "
                                  "CKKS parameters or the path of a file holding one") from exc
    return params_from_json(text)


def _workers(text: str) -> int | None:
    if not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise SubmissionError(f"{WORKERS_ENV} must be a positive integer, got {text!r}")
    return value


def load_config(env: Mapping[str, str] | None = None) -> BenchConfig:
    """The run's settings from ``env`` (default ``os.environ``); SubmissionError or the library's own errors."""
    from cryptoface.assets import default_model_path
    from cryptoface.model.file import read_header

    env = os.environ if env is None else env
    backend = env.get(BACKEND_ENV, "").strip() or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise SubmissionError(f"{BACKEND_ENV}={backend!r}: choose one of {', '.join(sorted(BACKENDS))}")
    model_text = env.get(MODEL_ENV, "").strip()
    model_path = Path(model_text).expanduser() if model_text else default_model_path()
    resolution = int(read_header(model_path)["resolution"])
    return BenchConfig(backend, _params(env.get(PARAMS_ENV, ""), resolution), model_path, resolution,
                       _workers(env.get(WORKERS_ENV, "")))
