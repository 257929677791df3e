"""Client key material: generation, and a private key home (``--home`` or ``$CRYPTOFACE_HOME``).

Layout of the home directory (mode 0700, files 0600)::

    keyset.json           backend, CKKS parameters, key id, template stride, model resolution, key kinds
    secret.key            the secret key, in the backend's own framed format - never sent anywhere
    eval/<kind>.bin       public and evaluation keys (what the server receives)

The key id is computed once, when the keys are made, and stored; a loaded key set never re-exports its
evaluation keys to learn it. Loading builds the backend from the public key alone plus the secret key: the
client encrypts and decrypts, it never rotates, so gigabytes of rotation keys stay on disk until uploaded.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptoface.backends import backend_class, create_backend
from cryptoface.backends.protocol import CkksBackend, CkksParameters
from cryptoface.engine import rotation_steps_for
from cryptoface.errors import CryptoFaceError, MissingKeyError
from cryptoface.match.homomorphic import rotation_steps as matching_rotation_steps
from cryptoface.match.layout import TemplateLayout
from cryptoface.params import params_from_json, params_to_json
from cryptoface.store.base import key_fingerprint

HOME_ENV = "CRYPTOFACE_HOME"
DEFAULT_HOME = Path.home() / ".cryptoface"
KEYSET_FILE = "keyset.json"
SECRET_FILE = "secret.key"
KEYSET_FORMAT = 2  # keyset.json carries key_id and resolution


class KeyHomeError(CryptoFaceError):
    """The key home cannot be written or read as asked (exists already, unreadable, too open)."""


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


def engine_rotation_steps(resolution: int | None, slots: int, levels: int) -> frozenset[int]:
    """Rotation steps of the engine's plan; empty when no resolution is given (template-only clients)."""
    if resolution is None:
        return frozenset()
    return frozenset(int(k) % slots for k in rotation_steps_for(resolution, slots, levels))


@dataclass
class ClientKeys:
    """A client's backend holding the secret key, plus what the server needs to know about it.

    ``home`` is set once the keys are saved or loaded: evaluation keys are then read from its files, one
    at a time, instead of being exported from the backend."""

    backend: CkksBackend
    key_id: str
    stride: int = 1
    resolution: int | None = None
    home: Path | None = None
    key_kinds: tuple[str, ...] = ()

    @property
    def layout(self) -> TemplateLayout:
        return TemplateLayout(self.stride)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def params(self) -> CkksParameters:
        return self.backend.params

    @property
    def params_json(self) -> str:
        return params_to_json(self.backend.params)

    def evaluation_keys(self, exclude: Iterable[str] = ()) -> Iterator[tuple[str, bytes]]:
        """(kind, bytes) of the public and evaluation keys, "public" first, one key in memory at a time;
        kinds in ``exclude`` (what the service holds already) are not read at all."""
        skip = set(exclude)
        if self.home is None:
            keys = {k: v for k, v in self.backend.export_evaluation_keys().items() if k not in skip}
            if "public" in keys:
                yield "public", keys.pop("public")
            while keys:
                yield keys.popitem()
            return
        for kind in ("public", *sorted(k for k in self.key_kinds if k != "public")):
            if kind not in skip:
                yield kind, (self.home / "eval" / _kind_file(kind)).read_bytes()

    def evaluation_key_bytes(self) -> int:
        """Total size of the public and evaluation keys (what registration uploads)."""
        if self.home is None:
            return sum(len(v) for v in self.backend.export_evaluation_keys().values())
        return sum((self.home / "eval" / _kind_file(k)).stat().st_size for k in self.key_kinds)

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
        """Fresh keys with the rotations matching needs (and the engine plan's for ``resolution``)."""
        backend = create_backend(backend_name, params, **options)
        steps = set(matching_rotation_steps(TemplateLayout(stride), backend.slots))
        steps |= engine_rotation_steps(resolution, backend.slots, backend.params.levels)
        steps |= {int(k) % backend.slots for k in extra_rotations}
        backend.generate_keys(sorted(steps))
        public = backend.export_evaluation_keys()
        kinds = tuple(sorted(public))
        return cls(backend, key_fingerprint(public["public"]), stride, resolution, None, kinds)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, home: str | os.PathLike[str] | None = None, *, overwrite: bool = False) -> Path:
        """Write the key set to a private home; refuses to replace an existing key set unless ``overwrite``."""
        root = home_dir(home)
        if (root / KEYSET_FILE).exists() or (root / SECRET_FILE).exists():
            if not overwrite:
                raise KeyHomeError(f"{root} already holds a key set; pass --force to replace it (its secret key "
                                   "is lost, and whatever was enrolled under it can no longer be matched)")
            shutil.rmtree(root / "eval", ignore_errors=True)
        secret = self.backend.export_secret_key()
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        (root / "eval").mkdir(exist_ok=True)
        os.chmod(root / "eval", 0o700)
        kinds = []
        for kind, data in self.evaluation_keys():
            _write_private(root / "eval" / _kind_file(kind), data)
            kinds.append(kind)
        _write_private(root / SECRET_FILE, secret)
        meta = {
            "format": KEYSET_FORMAT,
            "backend": self.backend_name,
            "params": json.loads(self.params_json),
            "key_id": self.key_id,
            "stride": self.stride,
            "resolution": self.resolution,
            "key_kinds": sorted(kinds),
        }
        # written last: a home with keyset.json is complete
        _write_private(root / KEYSET_FILE, json.dumps(meta, indent=2).encode())
        self.home, self.key_kinds = root, tuple(sorted(kinds))
        return root

    @classmethod
    def load(cls, home: str | os.PathLike[str] | None = None, **options: Any) -> ClientKeys:
        """The key set saved in ``home``: public key + secret key loaded, evaluation keys left on disk."""
        root = home_dir(home)
        meta_path = root / KEYSET_FILE
        if not meta_path.is_file():
            raise MissingKeyError(f"no keys in {root}; run 'cryptoface keygen --home {root}' first")
        secret_path = root / SECRET_FILE
        mode = stat.S_IMODE(secret_path.stat().st_mode)
        if mode & 0o077:
            raise KeyHomeError(f"{secret_path} is readable by others (mode {mode:o}); chmod 600 it")
        try:
            meta = json.loads(meta_path.read_text())
            params = params_from_json(json.dumps(meta["params"]))
            backend_name, key_id = str(meta["backend"]), str(meta["key_id"])
            kinds = tuple(str(k) for k in meta["key_kinds"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyHomeError(f"{meta_path} is not a CryptoFace key set ({exc}); run 'cryptoface keygen'") from exc
        public = (root / "eval" / _kind_file("public")).read_bytes()
        if key_fingerprint(public) != key_id:
            raise KeyHomeError(f"the public key in {root} does not match the key id in {meta_path}")
        backend = backend_class(backend_name).from_public_keys(params, {"public": public}, **options)
        backend.load_secret_key(secret_path.read_bytes())
        resolution = meta.get("resolution")
        return cls(backend, key_id, int(meta.get("stride", 1)), None if resolution is None else int(resolution),
                   root, kinds)
