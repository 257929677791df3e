"""The matching server: :func:`create_app` (FastAPI) over a :class:`~cryptoface.store.base.TemplateStore`.

It evaluates under client public/evaluation keys only; nothing in this package loads or accepts a secret key.
Names are resolved lazily so that :mod:`cryptoface.service.core` (the in-process service a client can call)
does not pull in FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MatchService", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from cryptoface.service.app import create_app

        return create_app
    if name == "MatchService":
        from cryptoface.service.core import MatchService

        return MatchService
    raise AttributeError(f"module 'cryptoface.service' has no attribute {name!r}")
