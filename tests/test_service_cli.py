"""CLI smoke tests: keygen writes a private home, demo --quick runs end to end on the simulator."""

from __future__ import annotations

import stat

import pytest

from cryptoface.cli import main
from cryptoface.client import ClientKeys


def test_keygen_home_is_private(tmp_path, capsys):
    home = tmp_path / "home"
    assert main(["keygen", "--home", str(home), "--backend", "simulator"]) == 0
    assert stat.S_IMODE((home / "secret.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    keys = ClientKeys.load(home)
    assert keys.backend.has_secret_key
    assert "NOT ENCRYPTED" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_runs_the_engine_end_to_end(capsys):
    # Four engine inferences on the simulator at N = 2^16 (same plan and levels as the encrypted demo).
    assert main(["demo", "--backend", "simulator"]) == 0
    out = capsys.readouterr().out
    assert "NOT ENCRYPTED (simulator)" in out
    assert "genuine: ACCEPT" in out and "impostor: REJECT" in out
    assert "identify: obama" in out
