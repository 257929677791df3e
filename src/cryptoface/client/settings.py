"""Where the client's server is and how it proves who it is: URL, API key, CA certificate.

Each setting comes from, in order: the command-line flag (``--server``, ``--api-key``, ``--ca-cert``), the
environment (``$CRYPTOFACE_SERVER``, ``$CRYPTOFACE_API_KEY``, ``$CRYPTOFACE_CA_CERT``), ``<home>/server.json``
(written by ``cryptoface login``, mode 0600 like the secret key, because it holds a bearer token), or the
default (``http://127.0.0.1:8000``, no key, the system's trust store).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptoface.client.keys import KeyHomeError, home_dir

DEFAULT_SERVER = "http://127.0.0.1:8000"
SERVER_ENV = "CRYPTOFACE_SERVER"
API_KEY_ENV = "CRYPTOFACE_API_KEY"
CA_CERT_ENV = "CRYPTOFACE_CA_CERT"
SERVER_FILE = "server.json"


@dataclass(frozen=True)
class ServerSettings:
    """The server a client talks to and the credential it sends (``api_key`` None: no credential)."""

    server: str = DEFAULT_SERVER
    api_key: str | None = None
    ca_cert: Path | None = None

    def __repr__(self) -> str:  # the token never lands in a log or a traceback
        shown = None if self.api_key is None else api_key_id(self.api_key) or "<set>"
        return f"ServerSettings(server={self.server!r}, api_key={shown!r}, ca_cert={self.ca_cert!r})"


def api_key_id(token: str) -> str | None:
    """The public key id inside a ``cf_<key_id>_<secret>`` token (what the audit log names), else None."""
    parts = token.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "cf" and parts[1] else None


def read_server_file(home: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """``<home>/server.json`` as a dict ({} when absent); refused when others can read it (it holds a token)."""
    path = home_dir(home) / SERVER_FILE
    if not path.is_file():
        return {}
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyHomeError(f"{path} is readable by others (mode {mode:o}) and holds an API key; chmod 600 it")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise KeyHomeError(f"{path} is not valid JSON ({exc}); run 'cryptoface login' again") from exc
    if not isinstance(data, dict):
        raise KeyHomeError(f"{path} is not a CryptoFace server file; run 'cryptoface login' again")
    return {str(k): str(v) for k, v in data.items() if v is not None}


def write_server_file(settings: ServerSettings, home: str | os.PathLike[str] | None = None) -> Path:
    """Save ``settings`` as ``<home>/server.json`` (home 0700, file 0600, written before it is readable)."""
    root = home_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    data = {"server": settings.server, "api_key": settings.api_key,
            "ca_cert": None if settings.ca_cert is None else str(Path(settings.ca_cert).resolve())}
    path = root / SERVER_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({k: v for k, v in data.items() if v is not None}, f, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # never a half-written file holding a token
    return path


def resolve_settings(
    server: str | None = None,
    api_key: str | None = None,
    ca_cert: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> ServerSettings:
    """Each setting from the argument, else the environment, else ``<home>/server.json``, else the default."""
    saved = read_server_file(home)
    url = (server or os.environ.get(SERVER_ENV) or saved.get("server") or DEFAULT_SERVER).rstrip("/")
    # the saved key and CA certificate belong to the saved server: a key is never sent to another one
    same = saved.get("server", "").rstrip("/") == url
    token = api_key or os.environ.get(API_KEY_ENV) or (saved.get("api_key") if same else None)
    ca = ca_cert or os.environ.get(CA_CERT_ENV) or (saved.get("ca_cert") if same else None)
    return ServerSettings(url, token or None, None if not ca else Path(ca).expanduser())

