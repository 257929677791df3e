"""Errors the service raises on purpose; :data:`cryptoface.service.app.ERRORS` maps each onto one HTTP status.

They all derive from :class:`~cryptoface.errors.CryptoFaceError` (a caller's mistake or a refusal), so the CLI
prints their message and the in-process transport sees the same classes the HTTP client sees as codes.
"""

from __future__ import annotations

from cryptoface.errors import CryptoFaceError


class ServiceInputError(CryptoFaceError):
    """A request that is well-formed JSON but cannot be served (HTTP 400)."""


class BadKeyKindError(ServiceInputError):
    """A key kind outside the key set's allowed kinds (HTTP 400)."""


class EngineUnavailableError(CryptoFaceError):
    """Encrypted inference is not available in this build (HTTP 501)."""


class UnauthorizedError(CryptoFaceError):
    """No valid credential for this route (HTTP 401); one message for missing, unknown and revoked keys."""


class AdminDisabledError(CryptoFaceError):
    """The server was started without an admin credential, so admin routes are off (HTTP 503)."""


class ProofFailedError(CryptoFaceError):
    """The proof of possession does not match the challenge (HTTP 403)."""


class BusyError(CryptoFaceError):
    """The server cannot take this request now (heavy slots full, memory budget spent): HTTP 503 + Retry-After."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


__all__ = [
    "AdminDisabledError",
    "BadKeyKindError",
    "BusyError",
    "EngineUnavailableError",
    "ProofFailedError",
    "ServiceInputError",
    "UnauthorizedError",
]
