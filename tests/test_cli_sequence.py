"""The product's own flow, each command a separate process: an operator sets up a tenant, a client enrols, matches,
deletes, and the server restarts in between.

admin key file -> serve -> admin tenant-create -> admin api-key-create -> login -> keygen -> enroll -> verify
ACCEPT/REJECT -> identify -> enroll --add -> restart -> verify -> another tenant sees nothing -> delete template ->
delete subject -> revoke the key -> delete keyset.

Three runs: the simulator with the real engine (encrypted-inference plan at N = 2^16, not encryption); OpenFHE at
TEST-ONLY REDUCED parameters (N = 2^14, 7 levels: 128-bit by the HE-standard table, but too few levels for the
network, so the client sends labelled stand-in templates: clear embeddings, encrypted); and the simulator at the
reduced parameters over HTTPS (self-signed certificate, ``--ca-cert``) with a key rotation. The full-size OpenFHE
sequence is measured in the README.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cryptoface.assets import SAMPLES_DIR
from cryptoface.backends import available_backends

CLI = [sys.executable, "-m", "cryptoface"]
ADMIN_KEY = "admin-key-for-tests-" + "x" * 24
REDUCED = ["--template-only", "--log-ring", "14", "--levels", "7"]
OBAMA3, OBAMA4, CHIRAC1 = (str(SAMPLES_DIR / f) for f in ("obama3.jpg", "obama4.jpg", "chirac1.jpg"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``cryptoface serve`` in its own process."""

    def __init__(self, db: str | Path, env: dict[str, str], log: Path, args: list[str],
                 cert: Path | None = None) -> None:
        self.port = _free_port()
        self.url = f"{'https' if cert else 'http'}://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        self.proc = subprocess.Popen([*CLI, "serve", "--db", str(db), "--port", str(self.port), *args], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        verify = True if cert is None else ssl.create_default_context(cafile=str(cert))
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None, f"server exited: {log.read_text()[-2000:]}"
            assert time.time() < deadline, "server did not start"
            try:
                if httpx.get(self.url + "/v1/health", timeout=2, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def _run(env: dict[str, str], *args: str, expect: int = 0) -> str:
    r = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == expect, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout + r.stderr


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOFACE_")}
    return {**env, "CRYPTOFACE_HOME": str(tmp_path / "home")}


def _admin_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin.key"
    path.write_text(ADMIN_KEY + "\n")
    path.chmod(0o600)
    return path


def _tenant(env: dict[str, str], name: str, admin: list[str]) -> tuple[str, str]:
    """A tenant made through the CLI and one API key for it: (tenant id, token)."""
    out = _run(env, "admin", "tenant-create", name, *admin)
    tenant = re.search(r"tn_[0-9a-f]{16}", out).group(0)
    out = _run(env, "admin", "api-key-create", tenant, *admin)
    return tenant, re.search(r"cf_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", out).group(0)


def _sequence(tmp_path: Path, keygen: list[str], client: list[str], serve: list[str] = (),
              tls: bool = False, db: str | None = None, decision: bool = False) -> None:
    env = _env(tmp_path)
    cert = None
    serve = [*serve, "--admin-key-file", str(_admin_file(tmp_path))]
    if tls:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                        str(cert)], check=True, capture_output=True)
        serve += ["--tls-cert", str(cert), "--tls-key", str(key)]
    db, log = db or str(tmp_path / "faces.db"), tmp_path / "server.log"
    server = Server(db, env, log, serve, cert)
    tls_args = [] if cert is None else ["--ca-cert", str(cert)]
    admin = ["--server", server.url, "--admin-key-file", str(tmp_path / "admin.key"), *tls_args]
    try:
        _, token = _tenant(env, "Acme Ltd", admin)
        _, other_token = _tenant(env, "Other Org", admin)
        out = _run(env, "login", "--server", server.url, "--api-key", token, *tls_args)
        assert "accepts API key" in out and token not in out
        out = _run(env, "keygen", *keygen)
        assert "key id" in out
        assert "already holds a key set" in _run(env, "keygen", *keygen, expect=2)  # never overwritten silently

        assert "enrolled obama: subject" in _run(env, "enroll", "obama", OBAMA3, *client)
        assert "use --add" in _run(env, "enroll", "obama", OBAMA4, *client, expect=2)
        assert "must not contain" in _run(env, "enroll", "../obama", OBAMA4, *client, expect=2)
        assert "ACCEPT obama" in _run(env, "verify", "obama", OBAMA4, *client)
        assert "REJECT obama" in _run(env, "verify", "obama", CHIRAC1, *client, expect=1)
        assert "identified: obama" in _run(env, "identify", OBAMA4, *client)
        if decision:  # decision-only mode at the default parameters: templates enrolled decision-ready
            assert "decision-ready" in _run(env, "verify", "obama", OBAMA4, "--mode", "decision", *client, expect=2)
            _run(env, "enroll", "dana", OBAMA3, "--decision-ready", *client)
            assert "ACCEPT dana (decision only)" in _run(env, "verify", "dana", OBAMA4, "--mode", "decision", *client)
            assert "REJECT dana" in _run(env, "verify", "dana", CHIRAC1, "--mode", "decision", *client, expect=1)
            _run(env, "delete", "subject", "dana")  # the later steps count obama alone
        assert "2 template(s)" in _run(env, "enroll", "obama", OBAMA4, "--add", *client)
    finally:
        server.stop()
    server = Server(db, env, log, serve, cert)  # restarted: tenants, keys and templates come from the store
    try:
        url = ["--server", server.url]  # the port changed; the saved key goes to the saved server only
        client = [*url, "--api-key", token, *tls_args, *client]
        assert "ACCEPT obama" in _run(env, "verify", "obama", OBAMA4, *client)
        outsider = [*url, "--api-key", other_token, *tls_args]
        assert "0 subject(s)" in _run(env, "subjects", *outsider)  # another tenant's key set looks absent
        assert "unknown_key_set" in _run(env, "delete", "keyset", *outsider, expect=2)
        mine = [*url, "--api-key", token, *tls_args]
        ids = _template_ids(env, mine, "obama")
        assert len(ids) == 2
        assert f"erased template {ids[1]}" in _run(env, "delete", "template", str(ids[1]), *mine)
        assert _template_ids(env, mine, "obama") == ids[:1]
        assert "erased subject obama" in _run(env, "delete", "subject", "obama", *mine)
        assert "0 subject(s)" in _run(env, "subjects", *mine)
        assert "no subject 'obama' is enrolled" in _run(env, "verify", "obama", OBAMA4, *client, expect=2)
        audit = _run(env, "audit", *mine)
        for action in ("keyset.register", "keyset.activate", "subject.create", "template.add", "template.delete",
                       "subject.delete"):
            assert action in audit
        assert "obama" not in audit  # ids only
        admin = ["--server", server.url, "--admin-key-file", str(tmp_path / "admin.key"), *tls_args]
        key_id = token.split("_", 2)[1]
        assert f"revoked api key {key_id}" in _run(env, "admin", "api-key-revoke", key_id, *admin)
        assert "refused the credential" in _run(env, "subjects", *mine, expect=2)
        other = [*url, "--api-key", other_token, *tls_args]
        assert "0 subject(s)" in _run(env, "subjects", *other)  # the other tenant's key still works
    finally:
        server.stop()
    text = log.read_text()
    assert "secret" not in text.lower()
    assert "obama" not in text  # names travel in bodies: the access log never holds one
    assert token.split("_", 2)[2] not in text


def _template_ids(env: dict[str, str], args: list[str], name: str) -> list[int]:
    for line in _run(env, "subjects", *args).splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1] == name:
            return [int(i) for i in parts[2].removeprefix("templates ").split(", ")]
    return []


def test_sequence_on_the_simulator_with_the_engine(tmp_path):
    _sequence(tmp_path, ["--backend", "simulator"], [], decision=True)


def test_one_round_sequence_on_the_simulator_with_the_engine(tmp_path):
    """The one-round protocol stays selectable: keys with matching's levels, the server normalising."""
    _sequence(tmp_path, ["--backend", "simulator", "--protocol", "one-round"], ["--protocol", "one-round"])


@pytest.mark.skipif("openfhe" not in available_backends(), reason="OpenFHE is not importable in this environment "
                    "(scripts/test.sh runs this file again in the OpenFHE environment)")
def test_sequence_on_openfhe_at_test_only_reduced_parameters(tmp_path):
    _sequence(tmp_path, ["--backend", "openfhe", *REDUCED], ["--standin"], ["--no-model"])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_sequence_over_tls_on_the_simulator_at_reduced_parameters(tmp_path):
    _sequence(tmp_path, ["--backend", "simulator", *REDUCED], ["--standin"], ["--no-model"], tls=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_key_rotation_over_tls(tmp_path):
    """rotate-keys: new key set registered and enrolled, old one erased on the server and here."""
    env = _env(tmp_path)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    serve = ["--no-model", "--admin-key-file", str(_admin_file(tmp_path)), "--tls-cert", str(cert), "--tls-key",
             str(key)]
    server = Server(tmp_path / "faces.db", env, tmp_path / "server.log", serve, cert)
    try:
        admin = ["--server", server.url, "--admin-key-file", str(tmp_path / "admin.key"), "--ca-cert", str(cert)]
        _, token = _tenant(env, "acme", admin)
        assert "refusing to send a credential in the clear" in _run(
            env, "login", "--server", server.url.replace("https://127.0.0.1", "http://10.0.0.1"), "--api-key", token,
            expect=2)
        _run(env, "login", "--server", server.url, "--api-key", token, "--ca-cert", str(cert))
        _run(env, "keygen", "--backend", "simulator", *REDUCED)
        _run(env, "enroll", "obama", OBAMA3, "--standin")
        _run(env, "enroll", "chirac", CHIRAC1, "--standin")
        old = re.search(r"key set ([0-9a-f]{12})", _run(env, "subjects")).group(1)
        assert "--drop-missing" in _run(env, "rotate-keys", "--enroll", f"obama={OBAMA3}", "--standin", expect=2)
        out = _run(env, "rotate-keys", "--enroll", f"obama={OBAMA3}", "--drop-missing", "--standin")
        new = re.search(rf"rotated: key set {old} -> ([0-9a-f]{{12}})", out).group(1)
        assert new != old
        assert "ACCEPT obama" in _run(env, "verify", "obama", OBAMA4, "--standin")
        listed = _run(env, "subjects")
        assert "1 subject(s)" in listed and new in listed and "chirac" not in listed
        assert not any(p.name.startswith(("rotating", "retired")) for p in (tmp_path / "home").iterdir())
        audit = _run(env, "audit")
        assert "keyset.delete" in audit and old in audit
    finally:
        server.stop()


def _postgres_database() -> str | None:
    """A fresh database on the test PostgreSQL server ($CRYPTOFACE_TEST_POSTGRES), or None when there is none."""
    try:
        import psycopg
    except ImportError:
        return None
    url = os.environ.get("CRYPTOFACE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"cf_cli_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.Error:
        return None
    return url.rsplit("/", 1)[0] + "/" + name


def test_sequence_on_postgresql_at_reduced_parameters(tmp_path):
    """serve --db postgresql://...: the same life cycle, restart included, on a database of its own."""
    db = _postgres_database()
    if db is None:
        pytest.skip("no PostgreSQL server or psycopg here (scripts/postgres-test-server.sh starts one)")
    import psycopg

    try:
        _sequence(tmp_path, ["--backend", "simulator", *REDUCED], ["--standin"], ["--no-model"], db=db)
    finally:
        admin_url, name = db.rsplit("/", 1)
        with psycopg.connect(os.environ.get("CRYPTOFACE_TEST_POSTGRES", admin_url + "/test"), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
