"""Public key folders: everything a server reads and no secret key; a backend built from one evaluates and
encrypts but cannot decrypt; a folder holding a secret key is refused."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pytest

from cryptoface.backends import available_backends
from cryptoface.backends.protocol import CkksParameters
from cryptoface.cli import main
from cryptoface.client.keys import ClientKeys, KeyHomeError, PublicKeys, load_public_backend
from cryptoface.errors import MissingKeyError

SIM_PARAMS = CkksParameters(log_ring=12, levels=8)
OFH_PARAMS = CkksParameters(log_ring=14, levels=4)  # test-only: too few levels for the network


def _saved(tmp_path, backend: str, params: CkksParameters) -> tuple[ClientKeys, object, object]:
    keys = ClientKeys.generate(backend, params, stride=2, extra_rotations=[1, 3])
    home = keys.save(tmp_path / "home", public_out=tmp_path / "public")
    return keys, home, tmp_path / "public"


def _check_folder(keys: ClientKeys, home, public) -> None:
    files = sorted(p.relative_to(public).as_posix() for p in public.rglob("*") if p.is_file())
    assert "secret.key" not in files and not any("secret" in f for f in files)
    assert files == sorted(["keyset.json", *(f"eval/{k.replace(':', '_')}.bin" for k in keys.key_kinds)])
    secret = (home / "secret.key").read_bytes()
    for f in public.rglob("*"):
        if f.is_file():
            assert f.read_bytes() != secret
            assert stat.S_IMODE(f.stat().st_mode) == 0o644
    meta = json.loads((public / "keyset.json").read_text())
    assert meta["public_only"] is True and meta["key_id"] == keys.key_id
    assert not any("secret" in k for k in meta) and "secret" not in meta["key_kinds"]
    for k in keys.key_kinds:  # the home keeps whole copies (hard links here: one file system)
        a, b = home / "eval" / f"{k.replace(':', '_')}.bin", public / "eval" / f"{k.replace(':', '_')}.bin"
        assert a.read_bytes() == b.read_bytes() and a.stat().st_ino == b.stat().st_ino


def _server_round_trip(keys: ClientKeys, public, atol: float) -> None:
    server, info = load_public_backend(public)
    assert not server.has_secret_key and info["key_id"] == keys.key_id and info["stride"] == 2
    assert info["params"] == keys.params and server.key_id == keys.backend.key_id
    x = np.arange(1.0, 9.0) / 8
    ct = server.encrypt(x)  # the server encrypts under the client's public key
    with pytest.raises(MissingKeyError):
        server.decrypt(ct)
    y = server.rescale(server.mul(server.rotate(ct, 1), ct))
    client = ClientKeys.load(keys.home).backend
    got = client.decrypt(client.deserialize(server.serialize(y)))
    want = np.roll(np.pad(x, (0, server.slots - x.size)), -1) * np.pad(x, (0, server.slots - x.size))
    assert np.allclose(got[:16], want[:16], atol=atol)


def test_simulator_public_folder_has_no_secret_and_serves(tmp_path):
    keys, home, public = _saved(tmp_path, "simulator", SIM_PARAMS)
    _check_folder(keys, home, public)
    _server_round_trip(keys, public, 1e-9)
    pk = PublicKeys.load(public)
    assert (pk.backend, pk.key_id, pk.params, pk.stride, pk.resolution) == (
        "simulator", keys.key_id, SIM_PARAMS, 2, None)
    assert pk.load_backend(kinds=["rotation:1"], threads=1).rotation_steps() == frozenset({1})
    assert ClientKeys.load(home).key_id == keys.key_id  # the home still loads
    shutil.rmtree(public)
    assert dict(ClientKeys.load(home).evaluation_keys())  # and stays whole without the public folder


def test_folders_holding_a_secret_key_are_refused(tmp_path):
    _, home, public = _saved(tmp_path, "simulator", SIM_PARAMS)
    with pytest.raises(KeyHomeError, match="holds a secret key"):
        load_public_backend(home)
    with pytest.raises(MissingKeyError, match="holds no secret key"):
        ClientKeys.load(public)
    for planted in (public / "secret.key", public / "eval" / "secret.bin"):
        shutil.copy(home / "secret.key", planted)
        with pytest.raises(KeyHomeError, match="holds a secret key"):
            PublicKeys.load(public)
        planted.unlink()
    meta = json.loads((public / "keyset.json").read_text())
    (public / "keyset.json").write_text(json.dumps({**meta, "key_kinds": [*meta["key_kinds"], "secret"]}))
    with pytest.raises(KeyHomeError, match="secret key kinds"):
        PublicKeys.load(public)
    with pytest.raises(MissingKeyError, match="no public keys"):
        PublicKeys.load(tmp_path / "nowhere")


def test_public_folder_is_never_the_home_nor_replaced_silently(tmp_path):
    keys = ClientKeys.generate("simulator", SIM_PARAMS)
    with pytest.raises(KeyHomeError, match="must be outside the key home"):
        keys.save(tmp_path / "h", public_out=tmp_path / "h")
    keys.save(tmp_path / "h", public_out=tmp_path / "p")
    other = ClientKeys.generate("simulator", SIM_PARAMS)
    with pytest.raises(KeyHomeError, match="already holds public keys"):
        other.save(tmp_path / "h2", public_out=tmp_path / "p")
    assert not (tmp_path / "h2").exists()  # refused before anything was written
    other.save(tmp_path / "h2", public_out=tmp_path / "p", overwrite=True)
    assert PublicKeys.load(tmp_path / "p").key_id == other.key_id
    assert ClientKeys.load(tmp_path / "h").key_id == keys.key_id  # the first home kept its own keys
    loaded = ClientKeys.load(tmp_path / "h")
    loaded.save(tmp_path / "h", public_out=tmp_path / "p3")  # already saved there: only the public folder
    assert PublicKeys.load(tmp_path / "p3").key_id == keys.key_id


def test_keygen_public_out_on_the_command_line(tmp_path, capsys):
    home, public = tmp_path / "home", tmp_path / "pub"
    assert main(["keygen", "--backend", "simulator", "--template-only", "--log-ring", "14", "--levels", "7",
                 "--home", str(home), "--public-out", str(public)]) == 0
    assert "public key folder" in capsys.readouterr().out
    assert not (public / "secret.key").exists() and (home / "secret.key").exists()
    backend, info = load_public_backend(public)
    assert not backend.has_secret_key and info["key_id"] == ClientKeys.load(home).key_id


@pytest.mark.skipif("openfhe" not in available_backends(), reason="OpenFHE is not importable in this environment "
                    "(run under .venv-openfhe)")
def test_openfhe_public_folder_evaluates_but_cannot_decrypt(tmp_path):
    keys, home, public = _saved(tmp_path, "openfhe", OFH_PARAMS)
    _check_folder(keys, home, public)
    _server_round_trip(keys, public, 1e-4)
