"""The client's web app (``cryptoface ui``): enrol, verify and identify in a browser; the secret key stays here."""

from cryptoface.ui.app import UiSession, check_loopback, create_ui_app, new_secret
from cryptoface.ui.server import serve_ui

__all__ = ["UiSession", "check_loopback", "create_ui_app", "new_secret", "serve_ui"]
