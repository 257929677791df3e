"""Serving the web app: uvicorn on a loopback socket, no access log (the first request line holds the session
secret), the link printed once."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from cryptoface.ui.app import UiSession, check_loopback, create_ui_app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on a loopback ``host`` (``port`` 0: any free one)."""
    check_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def login_url(session: UiSession) -> str:
    host = f"[{session.host}]" if ":" in session.host else session.host
    return f"http://{host}:{session.port}/login?token={session.secret}"


def serve_ui(session: UiSession, *, port: int = 0, announce: Callable[[str], None] = print) -> None:
    """Serve ``session`` until interrupted; ``announce`` gets the login link once the socket listens."""
    sock = bind(session.host, port)
    session.port = sock.getsockname()[1]
    config = uvicorn.Config(create_ui_app(session), access_log=False, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    announce(login_url(session))
    try:
        server.run(sockets=[sock])
    finally:
        session.tasks.close()
        sock.close()


__all__ = ["bind", "login_url", "serve_ui"]
