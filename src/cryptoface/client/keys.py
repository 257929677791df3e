"""Client key material: generation, and a home directory (``--home`` or ``$CRYPTOFACE_HOME``) with 0600 files.

Layout of the home directory (mode 0700)::

    keyset.json           backend, CKKS parameters, key id (sha256 of the public key), template stride
    secret.key            the secret key (0600) - never sent anywhere
    eval/<kind>.bin       public and evaluation keys (what the server receives)

The backend protocol has no secret-key export yet, so :data:`_SECRET_IO` adapts each backend here (client
side only); a backend without an adapter can generate keys but not persist them.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptoface.backends import backend_class, create_backend
from cryptoface.backends.protocol import CkksBackend, CkksParameters
from cryptoface.engine import rotation_steps_for
from cryptoface.errors import CryptoFaceError, MissingKeyError
from cryptoface.match.homomorphic import rotation_steps as matching_rotation_steps
from cryptoface.match.layout import TemplateLayout
from cryptoface.service.core import params_from_json, params_to_json
from cryptoface.store.base import key_fingerprint

HOME_ENV = "CRYPTOFACE_HOME"
DEFAULT_HOME = Path.home() / ".cryptoface"


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """``home``, else ``$CRYPTOFACE_HOME``, else ``~/.cryptoface``."""
    return Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def _kind_file(kind: str) -> str:
    return kind.replace(":", "_") + ".bin"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


# -- per-backend secret key (de)serialisation, client side only ----------------------------------------
def _sim_export(be: Any) -> bytes:
    return json.dumps({"key_id": be.key_id}).encode()


def _sim_import(be: Any, data: bytes) -> None:
    if json.loads(data)["key_id"] != be.key_id:
        raise MissingKeyError("the secret key belongs to another key set")
    be._secret = True


def _desilo_export(be: Any) -> bytes:
    return bytes(be.engine.serialize_secret_key(be._secret))


def _desilo_import(be: Any, data: bytes) -> None:
    be._secret = be.engine.deserialize_secret_key(data)


_SECRET_IO: dict[str, tuple[Callable[[Any], bytes], Callable[[Any, bytes], None]]] = {
    "simulator": (_sim_export, _sim_import),
    "desilofhe": (_desilo_export, _desilo_import),
}


def engine_rotation_steps(resolution: int | None, slots: int, levels: int) -> frozenset[int]:
    """Rotation steps of the engine's plan; empty when no resolution is given (template-only clients)."""
    if resolution is None:
        return frozenset()
    return frozenset(int(k) % slots for k in rotation_steps_for(resolution, slots, levels))


@dataclass
class ClientKeys:
    """A client's backend holding the secret key, plus what the server needs to know about it."""

    backend: CkksBackend
    stride: int = 1

    @property
    def layout(self) -> TemplateLayout:
        return TemplateLayout(self.stride)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def evaluation_keys(self) -> dict[str, bytes]:
        return self.backend.export_evaluation_keys()

    @property
    def key_id(self) -> str:
        return key_fingerprint(self.evaluation_keys["public"])

    @property
    def params_json(self) -> str:
        return params_to_json(self.backend.params)

    @classmethod
    def generate(
        cls,
        backend_name: str,
        params: CkksParameters | None = None,
        *,
        stride: int = 1,
        resolution: int | None = None,
        extra_rotations: Iterable[int] = (),
        **options: Any,
    ) -> ClientKeys:
        """Fresh keys with the rotations matching needs (and the engine plan's, when available)."""
        backend = create_backend(backend_name, params, **options)
        steps = set(matching_rotation_steps(TemplateLayout(stride), backend.slots))
        steps |= engine_rotation_steps(resolution, backend.slots, backend.params.levels)
        steps |= {int(k) % backend.slots for k in extra_rotations}
        backend.generate_keys(sorted(steps))
        return cls(backend, stride)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, home: str | os.PathLike[str] | None = None) -> Path:
        root = home_dir(home)
        if self.backend_name not in _SECRET_IO:
            raise CryptoFaceError(f"saving a {self.backend_name} secret key is not supported yet")
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        (root / "eval").mkdir(exist_ok=True)
        os.chmod(root / "eval", 0o700)
        keys = self.evaluation_keys
        for kind, data in keys.items():
            _write_private(root / "eval" / _kind_file(kind), data)
        _write_private(root / "secret.key", _SECRET_IO[self.backend_name][0](self.backend))
        meta = {
            "backend": self.backend_name,
            "params": json.loads(self.params_json),
            "key_id": key_fingerprint(keys["public"]),
            "stride": self.stride,
            "key_kinds": sorted(keys),
        }
        _write_private(root / "keyset.json", json.dumps(meta, indent=2).encode())
        return root

    @classmethod
    def load(cls, home: str | os.PathLike[str] | None = None, **options: Any) -> ClientKeys:
        root = home_dir(home)
        meta_path = root / "keyset.json"
        if not meta_path.is_file():
            raise MissingKeyError(f"no keys in {root}; run 'cryptoface keygen --home {root}' first")
        mode = stat.S_IMODE((root / "secret.key").stat().st_mode)
        if mode & 0o077:
            raise MissingKeyError(f"{root / 'secret.key'} is readable by others (mode {mode:o}); chmod 600 it")
        meta = json.loads(meta_path.read_text())
        params = params_from_json(json.dumps(meta["params"]))
        keys = {kind: (root / "eval" / _kind_file(kind)).read_bytes() for kind in meta["key_kinds"]}
        backend = backend_class(meta["backend"]).from_public_keys(params, keys, **options)
        _SECRET_IO[meta["backend"]][1](backend, (root / "secret.key").read_bytes())
        return cls(backend, int(meta.get("stride", 1)))
