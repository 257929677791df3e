"""CryptoFace: face recognition under CKKS homomorphic encryption."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Flat exports, imported lazily so `import cryptoface.<submodule>` stays light: name -> defining module.
_EXPORTS = {
    "load_image_file": "cryptoface.face",
    "align_face": "cryptoface.face",
    "preprocess": "cryptoface.face",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cryptoface' has no attribute {name!r}")
