"""The client package: key homes (private, never overwritten silently, key id stored) and no server imports."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import numpy as np
import pytest

from cryptoface.backends.protocol import CkksParameters
from cryptoface.client import ClientKeys, KeyHomeError
from cryptoface.errors import MissingKeyError
from cryptoface.store.base import key_fingerprint

PARAMS = CkksParameters(log_ring=12, levels=8)


def test_importing_the_client_does_not_import_the_server_stack():
    code = ("import sys, cryptoface.client; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_saved_home_is_private_and_carries_the_key_id(tmp_path):
    keys = ClientKeys.generate("simulator", PARAMS, extra_rotations=[1, 2])
    home = keys.save(tmp_path / "home")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for f in [home / "secret.key", home / "keyset.json", *(home / "eval").iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    meta = json.loads((home / "keyset.json").read_text())
    assert meta["key_id"] == keys.key_id == key_fingerprint((home / "eval" / "public.bin").read_bytes())

    loaded = ClientKeys.load(home)
    assert loaded.key_id == keys.key_id and loaded.backend.has_secret_key
    ct = keys.backend.encrypt(np.arange(4.0))
    assert np.allclose(loaded.backend.decrypt(loaded.backend.deserialize(keys.backend.serialize(ct)))[:4], np.arange(4))
    assert dict(loaded.evaluation_keys()) == dict(keys.evaluation_keys())  # read back from the files


def test_saving_never_replaces_a_key_set_unless_asked(tmp_path):
    first = ClientKeys.generate("simulator", PARAMS)
    first.save(tmp_path)
    second = ClientKeys.generate("simulator", PARAMS)
    with pytest.raises(KeyHomeError, match="already holds a key set"):
        second.save(tmp_path)
    assert ClientKeys.load(tmp_path).key_id == first.key_id
    second.save(tmp_path, overwrite=True)
    assert ClientKeys.load(tmp_path).key_id == second.key_id
    loaded = ClientKeys.load(tmp_path)
    before = dict(loaded.evaluation_keys())
    assert loaded.save(tmp_path, overwrite=True) == tmp_path  # onto its own home: nothing is lost
    assert dict(ClientKeys.load(tmp_path).evaluation_keys()) == before


def test_loading_refuses_open_or_tampered_homes(tmp_path):
    with pytest.raises(MissingKeyError, match="keygen"):
        ClientKeys.load(tmp_path / "nowhere")
    keys = ClientKeys.generate("simulator", PARAMS)
    home = keys.save(tmp_path / "h")
    (home / "secret.key").chmod(0o644)
    with pytest.raises(KeyHomeError, match="chmod 600"):
        ClientKeys.load(home)
    (home / "secret.key").chmod(0o600)
    meta = json.loads((home / "keyset.json").read_text())
    (home / "keyset.json").write_text(json.dumps({**meta, "key_id": "0" * 64}))
    with pytest.raises(KeyHomeError, match="does not match"):
        ClientKeys.load(home)
