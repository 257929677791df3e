"""Clear-text references of the encrypted matching (for tests and client-side checks) and a test helper."""

from __future__ import annotations

from typing import Any

import numpy as np

from cryptoface.backends.protocol import CkksBackend
from cryptoface.match.layout import TemplateLayout, place
from cryptoface.match.poly import ChebyshevSeries, inverse_sqrt_series, sign_clear


def normalise_clear(embedding: np.ndarray, series: ChebyshevSeries | None = None) -> np.ndarray:
    """e * p(||e||^2): exactly what :func:`cryptoface.match.homomorphic.normalise` computes, without noise."""
    e = np.asarray(embedding, dtype=np.float64)
    return e * (series or inverse_sqrt_series())(float(e @ e))


def cosine_clear(a: np.ndarray, b: np.ndarray) -> float:
    """The exact cosine similarity."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def decision_clear(score: float, tau: float) -> float:
    return float(sign_clear(score, tau))


def encrypt_embedding_for_tests(backend: CkksBackend, embedding: np.ndarray, layout: TemplateLayout, level: int) -> Any:
    """TEST HELPER, NOT INFERENCE: encrypt a clear 256-d embedding in the engine's template layout at ``level``.

    It stands in for the engine's output (same layout, chosen level) in tests and in the demo's fallback; a
    real deployment never has the embedding in the clear on either side.
    """
    return backend.encrypt(place(embedding, layout, backend.slots), level)
