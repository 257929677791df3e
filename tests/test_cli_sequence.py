"""The product's own flow, each command a separate process: keygen, serve, enroll, verify, identify, restart.

Two runs: the simulator with the real engine (encrypted-inference plan at N = 2^16, not encryption), and
OpenFHE at TEST-ONLY REDUCED parameters (N = 2^14, 7 levels: 128-bit by the HE-standard table, but too few
levels for the network, so the client sends labelled stand-in templates: clear embeddings, encrypted). The
full-size OpenFHE sequence is measured in the README.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cryptoface.assets import SAMPLES_DIR
from cryptoface.backends import available_backends

CLI = [sys.executable, "-m", "cryptoface"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``cryptoface serve`` in its own process."""

    def __init__(self, db: Path, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        self.proc = subprocess.Popen([*CLI, "serve", "--db", str(db), "--port", str(self.port)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None, f"server exited: {log.read_text()[-2000:]}"
            assert time.time() < deadline, "server did not start"
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
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


def _sequence(tmp_path: Path, keygen: list[str], client: list[str]) -> None:
    env = {**os.environ, "CRYPTOFACE_HOME": str(tmp_path / "home")}
    out = _run(env, "keygen", *keygen)
    assert "key id" in out
    assert "already holds a key set" in _run(env, "keygen", *keygen, expect=2)  # never overwritten silently
    db, log = tmp_path / "faces.db", tmp_path / "server.log"
    server = Server(db, env, log)
    try:
        url = ["--server", server.url, *client]
        assert "enrolled obama: 1 template(s)" in _run(env, "enroll", "obama", str(SAMPLES_DIR / "obama3.jpg"), *url)
        assert "ACCEPT obama" in _run(env, "verify", "obama", str(SAMPLES_DIR / "obama4.jpg"), *url)
        assert "REJECT obama" in _run(env, "verify", "obama", str(SAMPLES_DIR / "chirac1.jpg"), *url, expect=1)
        assert "identified: obama" in _run(env, "identify", str(SAMPLES_DIR / "obama4.jpg"), *url)
    finally:
        server.stop()
    server = Server(db, env, log)  # restarted: keys and templates come from the store
    try:
        url = ["--server", server.url, *client]
        assert "ACCEPT obama" in _run(env, "verify", "obama", str(SAMPLES_DIR / "obama4.jpg"), *url)
    finally:
        server.stop()
    assert "secret" not in log.read_text().lower()


def test_sequence_on_the_simulator_with_the_engine(tmp_path):
    _sequence(tmp_path, ["--backend", "simulator"], [])


@pytest.mark.skipif("openfhe" not in available_backends(), reason="OpenFHE is not importable in this environment "
                    "(scripts/test.sh runs this file again in the OpenFHE environment)")
def test_sequence_on_openfhe_at_test_only_reduced_parameters(tmp_path):
    _sequence(tmp_path, ["--backend", "openfhe", "--template-only", "--log-ring", "14", "--levels", "7"],
              ["--standin"])
