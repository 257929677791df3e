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


def synthetic_embedding(rng: np.random.Generator, like: np.ndarray | None = None, cos: float = 0.8) -> np.ndarray:
    """TEST/LOAD STAND-IN: a random 256-d template, or one at cosine ``cos`` to ``like``, with ||t||^2 in the
    range the normalisation is fitted for (100..550)."""
    if like is None:
        e = rng.standard_normal(256)
    else:
        u = like / np.linalg.norm(like)
        v = rng.standard_normal(256)
        v -= (v @ u) * u
        e = cos * u + np.sqrt(1 - cos**2) * v / np.linalg.norm(v)
    return e * np.sqrt(rng.uniform(100, 550)) / np.linalg.norm(e)
