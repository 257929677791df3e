"""TLS on the client side: a server certificate is verified against --ca-cert (or the system store), never skipped.

The certificate is self-signed for 127.0.0.1, made here with the ``openssl`` command; the server is uvicorn with
a minimal ASGI app (the HTTPS handshake and the client's checks are what is tested, not the service's routes).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from cryptoface.client import HTTPTransport, ServerError
from cryptoface.errors import CryptoFaceError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


def self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, key) PEM files of a one-day self-signed certificate for ``host``."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={host}",
                    "-addext", f"subjectAltName=IP:{host}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


async def app(scope, receive, send):
    """Answers every request with its x-api-key header echoed back (to see that it arrived)."""
    if scope["type"] != "http":
        return
    key = dict(scope["headers"]).get(b"x-api-key", b"")
    body = b'{"status": "ok", "key": "' + key + b'"}'
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def https_server(tmp_path):
    cert, key = self_signed(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=str(cert), ssl_keyfile=str(key)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"https://127.0.0.1:{port}", cert
    server.should_exit = True
    thread.join(10)


def test_the_server_certificate_is_verified(https_server, tmp_path):
    url, cert = https_server
    t = HTTPTransport(url, api_key="cf_0123456789ab_" + "A" * 43, ca_cert=cert)
    assert t.health() == {"status": "ok", "key": "cf_0123456789ab_" + "A" * 43}
    t.close()
    with pytest.raises(ServerError, match="CERTIFICATE_VERIFY_FAILED"):  # not in the system store
        HTTPTransport(url).health()
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")
    with pytest.raises(ServerError, match="CERTIFICATE_VERIFY_FAILED"):  # trusted: a different certificate
        HTTPTransport(url, ca_cert=other).health()
    with pytest.raises(CryptoFaceError, match="does not exist"):
        HTTPTransport(url, ca_cert=tmp_path / "missing.pem")
