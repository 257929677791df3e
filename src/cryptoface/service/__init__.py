"""The matching server: :func:`create_app` (FastAPI) over a :class:`~cryptoface.store.base.TemplateStore`.

It evaluates under client public/evaluation keys only; nothing in this package loads or accepts a secret key.
"""

from cryptoface.service.app import create_app
from cryptoface.service.core import MatchService

__all__ = ["MatchService", "create_app"]
