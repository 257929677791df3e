"""CLI smoke tests: keygen writes a private home, serve checks its flags, the demo runs end to end on the simulator."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from cryptoface.cli import main
from cryptoface.client import ClientKeys
from cryptoface.errors import CryptoFaceError


def test_keygen_home_is_private(tmp_path, capsys):
    home = tmp_path / "home"
    assert main(["keygen", "--home", str(home), "--backend", "simulator"]) == 0
    assert stat.S_IMODE((home / "secret.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    keys = ClientKeys.load(home)
    assert keys.backend.has_secret_key
    assert "NOT ENCRYPTED" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_runs_the_engine_end_to_end():
    # Four engine inferences on the simulator at N = 2^16 (same plan and levels as the encrypted demo), in a
    # process of its own as a user runs it: the in-process server's memory budget counts from that process's
    # own footprint, not from a test runner's.
    r = subprocess.run([sys.executable, "-m", "cryptoface", "demo", "--backend", "simulator"], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "NOT ENCRYPTED (simulator)" in out
    assert "genuine: ACCEPT" in out and "impostor: REJECT" in out
    assert "identify: obama" in out


def test_serve_refuses_half_a_tls_configuration_without_a_traceback(tmp_path, capsys):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    assert main(["serve", "--db", str(tmp_path / "f.db"), "--no-model", "--tls-cert", str(cert)]) == 2
    assert "--tls-key" in capsys.readouterr().err


def test_serve_helpers_read_byte_counts_and_hide_database_passwords():
    from cryptoface.cli.service_cmd import _db_label, parse_bytes

    assert parse_bytes("16G") == 16 * 1024**3 and parse_bytes("512MiB") == 512 * 1024**2 and parse_bytes("1000") == 1000
    with pytest.raises(CryptoFaceError):
        parse_bytes("lots")
    assert _db_label("postgresql://u:hunter2@db.internal:5432/faces") == "postgresql://u@db.internal:5432/faces"
    assert _db_label("faces.db") == "faces.db"
