"""CKKS backends behind one protocol: ``simulator`` (numpy, not encryption), ``desilofhe``, ``openfhe``."""

from __future__ import annotations

import importlib
from typing import Any

from cryptoface.backends.protocol import CkksBackend, CkksParameters
from cryptoface.errors import BackendUnavailableError

# name -> (module, class, pip hint); imported lazily so a missing optional library costs nothing.
BACKENDS: dict[str, tuple[str, str, str]] = {
    "simulator": ("cryptoface.backends.simulator", "SimulatorBackend", ""),
    "desilofhe": ("cryptoface.backends.desilo", "DesiloBackend", "pip install 'cryptoface[desilo]' (Python 3.10-3.12)"),
    "openfhe": ("cryptoface.backends.openfhe", "OpenFHEBackend", "pip install openfhe==1.6.1.0.22.4 (Python 3.10)"),
}


def backend_class(name: str) -> Any:
    """The class implementing backend ``name``; raises BackendUnavailableError if it cannot be imported."""
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls, hint = BACKENDS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name!r} is not installed here ({exc}); {hint}") from exc


def create_backend(name: str, params: CkksParameters | None = None, **options: Any) -> CkksBackend:
    """A new backend instance (no keys yet)."""
    return backend_class(name)(params or CkksParameters(), **options)


def read_untrusted(backend: CkksBackend, data: bytes) -> Any:
    """A ciphertext from the other side of a connection: screened (:meth:`CkksBackend.screen`), then read."""
    type(backend).screen(backend.params, "ciphertext", data)
    return backend.deserialize(data)


def available_backends() -> list[str]:
    """Names of the backends importable in this environment."""
    out = []
    for name in BACKENDS:
        try:
            backend_class(name)
        except BackendUnavailableError:
            continue
        out.append(name)
    return out


# Preference order when the user names none: OpenFHE is the faster engine backend and BSD-licensed; desilofhe
# is free for non-commercial use only; the simulator is not encryption.
PREFERENCE = ("openfhe", "desilofhe", "simulator")


def default_backend() -> str:
    """The first installed backend in :data:`PREFERENCE`."""
    have = available_backends()
    return next(b for b in PREFERENCE if b in have)


__all__ = [
    "BACKENDS",
    "PREFERENCE",
    "CkksBackend",
    "CkksParameters",
    "available_backends",
    "backend_class",
    "create_backend",
    "default_backend",
    "read_untrusted",
]
