"""Client key material: generation, a private key home (``--home`` or ``$CRYPTOFACE_HOME``) and, optionally, a
public key folder for a server that must never hold the secret key.

Layout of the home directory (mode 0700, files 0600)::

    keyset.json           backend, CKKS parameters, key id, template stride, model resolution, key kinds
    secret.key            the secret key, in the backend's own framed format - never sent anywhere
    eval/<kind>.bin       public and evaluation keys (what the server receives)
    match/                the matching ring's key set (refresh protocol), a home of the same layout

Layout of a public key folder (``save(public_out=DIR)``, ``keygen --public-out DIR``; mode 0755, files 0644)::

    keyset.json           the same fields as the home's plus ``"public_only": true``; nothing secret
    eval/<kind>.bin       public, relinearisation and rotation keys

It holds no ``secret.key``, and :class:`PublicKeys` refuses a folder that does. A home with a matching ring
writes the ring's public folder to ``match/`` of it. The home stays self-contained:
its ``eval/`` files are hard links to the public folder's when both are on one file system (no second copy
of gigabytes of rotation keys; the links then share the public files' 0644 mode, inside the 0700 home), else
copies. Deleting or moving either folder leaves the other whole.

The key id is computed once, when the keys are made, and stored; a loaded key set never re-exports its
evaluation keys to learn it. Loading builds the backend from the public key alone plus the secret key: the
client encrypts and decrypts, it never rotates, so gigabytes of rotation keys stay on disk until uploaded.
Two key sets, one home: the network's (the client's inference, decision-ready templates) and the matching ring's
(:func:`cryptoface.params.match_parameters`: refreshed score-mode templates are encrypted under it, so they are
stored and matched at N = 2^13). They are independent CKKS key sets, each registered as a key set of its own; the
home's ``keyset.json`` names the ring's key id, so a home and its ring cannot be mixed up.

The server side (:class:`PublicKeys`, :func:`load_public_backend`) builds its backend from every key in a
public folder with ``from_public_keys``: it encrypts and evaluates, it cannot decrypt.
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
from cryptoface.match.layout import TemplateLayout, normalised_layout
from cryptoface.params import match_parameters, params_from_json, params_to_json
from cryptoface.store.base import is_secret_kind, key_fingerprint

HOME_ENV = "CRYPTOFACE_HOME"
DEFAULT_HOME = Path.home() / ".cryptoface"
KEYSET_FILE = "keyset.json"
SECRET_FILE = "secret.key"
EVAL_DIR = "eval"
MATCH_DIR = "match"
KEYSET_FORMAT = 3  # keyset.json carries key_id, resolution and match_key_id


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
    match: ClientKeys | None = None  # the matching ring's key set, saved in <home>/match

    def key_sets(self) -> list[ClientKeys]:
        """This key set, then its matching ring's if it has one."""
        return [self] if self.match is None else [self, self.match]

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
        for kind in ("public", *sorted(k for k in self.key_kinds if k != "public")):
            if kind in skip:
                continue
            if self.home is None:  # fresh keys: exported from the backend one kind at a time
                yield kind, self.backend.export_evaluation_keys([kind])[kind]
            else:
                yield kind, (self.home / "eval" / _kind_file(kind)).read_bytes()

    def evaluation_key_bytes(self) -> int:
        """Total size of the public and evaluation keys (what registration uploads)."""
        if self.home is None:
            return sum(len(data) for _, data in self.evaluation_keys())
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
        match_ring: bool = False,
        **options: Any,
    ) -> ClientKeys:
        """Fresh keys with the rotations matching needs (and the engine plan's for ``resolution``); with
        ``match_ring`` also the matching ring's key set (:meth:`generate_match`)."""
        match = cls.generate_match(backend_name, **options) if match_ring else None
        backend = create_backend(backend_name, params, **options)
        steps = set(matching_rotation_steps(TemplateLayout(stride), backend.slots))
        steps |= engine_rotation_steps(resolution, backend.slots, backend.params.levels)
        steps |= {int(k) % backend.slots for k in extra_rotations}
        backend.generate_keys(sorted(steps))
        public = backend.export_evaluation_keys(["public"])["public"]  # not gigabytes of rotation keys
        kinds = tuple(sorted({"public", "relin", *(f"rotation:{k}" for k in backend.rotation_steps())}))
        return cls(backend, key_fingerprint(public), stride, resolution, None, kinds, match)

    @classmethod
    def generate_match(cls, backend_name: str, **options: Any) -> ClientKeys:
        """The matching ring's key set: :func:`~cryptoface.params.match_parameters`, the rotations of 1:1 and 1:N
        on normalised templates (a few MB of keys)."""
        params = match_parameters()
        return cls.generate(backend_name, params, stride=normalised_layout(params.slots).stride, **options)

    # -- persistence ----------------------------------------------------------------------------
    def _meta(self, kinds: Iterable[str]) -> dict[str, Any]:
        """keyset.json's fields (nothing secret: the secret key has its own file)."""
        return {
            "format": KEYSET_FORMAT,
            "backend": self.backend_name,
            "params": json.loads(self.params_json),
            "key_id": self.key_id,
            "stride": self.stride,
            "resolution": self.resolution,
            "key_kinds": sorted(kinds),
            "match_key_id": None if self.match is None else self.match.key_id,
        }

    def save(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        overwrite: bool = False,
        public_out: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write the key set to a private home; refuses to replace an existing key set unless ``overwrite``.

        With ``public_out``, also write a public key folder (no secret key) for a server; the home's
        ``eval/`` files are then hard links to it where the file system allows. Keys already saved in
        ``home`` only get their public folder written."""
        root = home_dir(home)
        public = None if public_out is None else Path(public_out).expanduser()
        if public is not None:
            _check_public_target(public, root, overwrite)
            if self.home is not None and self.home.resolve() == root.resolve():
                self.save_public(public, overwrite=overwrite, home=root)
                return root
        if self.home is not None and self.home.resolve() == root.resolve():
            return root  # saved there already: rewriting would delete eval/ before reading it back
        if (root / KEYSET_FILE).exists() or (root / SECRET_FILE).exists():
            if not overwrite:
                raise KeyHomeError(f"{root} already holds a key set; pass --force to replace it (its secret key "
                                   "is lost, and whatever was enrolled under it can no longer be matched)")
            shutil.rmtree(root / EVAL_DIR, ignore_errors=True)
            shutil.rmtree(root / MATCH_DIR, ignore_errors=True)
        secret = self.backend.export_secret_key()
        if public is not None:
            self.save_public(public, overwrite=overwrite, home=root)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        (root / EVAL_DIR).mkdir(exist_ok=True)
        os.chmod(root / EVAL_DIR, 0o700)
        kinds = []
        if public is None:
            for kind, data in self.evaluation_keys():
                _write_private(root / EVAL_DIR / _kind_file(kind), data)
                kinds.append(kind)
        else:
            for src in sorted((public / EVAL_DIR).iterdir()):
                _link_or_copy(src, root / EVAL_DIR / src.name)
            kinds = list(PublicKeys.load(public).key_kinds)
        _write_private(root / SECRET_FILE, secret)
        if self.match is not None:  # no keyset.json names it yet: a leftover of an interrupted save is replaced
            shutil.rmtree(root / MATCH_DIR, ignore_errors=True)
            self.match.save(root / MATCH_DIR)  # a few MB: its public folder (save_public) is a copy, not links
        # written last: a home with keyset.json is complete
        _write_private(root / KEYSET_FILE, json.dumps(self._meta(kinds), indent=2).encode())
        self.home, self.key_kinds = root, tuple(sorted(kinds))
        return root

    def save_public(
        self, public_out: str | os.PathLike[str], *, overwrite: bool = False, home: Path | None = None
    ) -> Path:
        """Write the public key folder (keyset.json + eval/, never the secret key) for a server to load."""
        out = Path(public_out).expanduser()
        _check_public_target(out, home if home is not None else self.home, overwrite)
        shutil.rmtree(out / EVAL_DIR, ignore_errors=True)
        (out / KEYSET_FILE).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        os.chmod(out, 0o755)
        (out / EVAL_DIR).mkdir()
        os.chmod(out / EVAL_DIR, 0o755)
        kinds = []
        for kind, data in self.evaluation_keys():
            if is_secret_kind(kind):  # never: export_evaluation_keys holds no secret; cheap to be sure
                raise KeyHomeError(f"refusing to write a key of kind {kind!r} to the public folder {out}")
            _write_public(out / EVAL_DIR / _kind_file(kind), data)
            kinds.append(kind)
        if self.match is not None:
            self.match.save_public(out / MATCH_DIR, overwrite=True, home=self.match.home)
        meta = {**self._meta(kinds), "public_only": True}
        _write_public(out / KEYSET_FILE, json.dumps(meta, indent=2).encode())  # last: the folder is complete
        return out

    @classmethod
    def load(cls, home: str | os.PathLike[str] | None = None, **options: Any) -> ClientKeys:
        """The key set saved in ``home``: public key + secret key loaded, evaluation keys left on disk."""
        root = home_dir(home)
        meta_path = root / KEYSET_FILE
        if not meta_path.is_file():
            raise MissingKeyError(f"no keys in {root}; run 'cryptoface keygen --home {root}' first")
        secret_path = root / SECRET_FILE
        if not secret_path.is_file():
            raise MissingKeyError(f"{root} holds no secret key (a public key folder?); point --home at the "
                                  "key home that 'cryptoface keygen' wrote")
        mode = stat.S_IMODE(secret_path.stat().st_mode)
        if mode & 0o077:
            raise KeyHomeError(f"{secret_path} is readable by others (mode {mode:o}); chmod 600 it")
        meta = _read_meta(meta_path)
        params, backend_name, key_id = meta["params"], meta["backend"], meta["key_id"]
        public = (root / EVAL_DIR / _kind_file("public")).read_bytes()
        if key_fingerprint(public) != key_id:
            raise KeyHomeError(f"the public key in {root} does not match the key id in {meta_path}")
        backend = backend_class(backend_name).from_public_keys(params, {"public": public}, **options)
        backend.load_secret_key(secret_path.read_bytes())
        match = None
        if meta["match_key_id"] is not None:
            match = cls.load(root / MATCH_DIR, **options)
            if match.key_id != meta["match_key_id"] or match.match is not None:
                raise KeyHomeError(f"{root / MATCH_DIR} is not the matching key set {meta_path} names")
        return cls(backend, key_id, meta["stride"], meta["resolution"], root, meta["key_kinds"], match)


@dataclass(frozen=True)
class PublicKeys:
    """A public key folder as the server sees it: what the keys are for, and a loader for its backend.

    ``backend`` is the backend's name; :meth:`load_backend` builds the backend object (no secret key)."""

    root: Path
    backend: str
    key_id: str
    params: CkksParameters
    stride: int
    resolution: int | None
    key_kinds: tuple[str, ...]

    @property
    def backend_name(self) -> str:
        return self.backend

    @classmethod
    def load(cls, public_dir: str | os.PathLike[str]) -> PublicKeys:
        """Read a public key folder's keyset.json; refuses a folder that holds a secret key."""
        root = Path(public_dir).expanduser()
        _refuse_secrets(root)
        meta_path = root / KEYSET_FILE
        if not meta_path.is_file():
            raise MissingKeyError(f"no public keys in {root}; run 'cryptoface keygen --public-out {root}' first")
        meta = _read_meta(meta_path)
        secret_kinds = [k for k in meta["key_kinds"] if is_secret_kind(k)]
        if secret_kinds:
            raise KeyHomeError(f"{meta_path} lists secret key kinds {secret_kinds}; a server loads public keys only")
        return cls(root, meta["backend"], meta["key_id"], meta["params"], meta["stride"], meta["resolution"],
                   meta["key_kinds"])

    def key_bytes(self, kind: str) -> bytes:
        """The bytes of one key of the folder (MissingKeyError when its file is missing)."""
        path = self.root / EVAL_DIR / _kind_file(kind)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise MissingKeyError(f"the public key folder {self.root} lacks {path.name} ({exc.strerror}); "
                                  "write it again with 'cryptoface keygen --public-out'") from exc

    def keys(self, kinds: Iterable[str] | None = None) -> dict[str, bytes]:
        """{kind: bytes} of ``kinds`` (default: every key of the folder); the public key's id is checked."""
        wanted = tuple(self.key_kinds if kinds is None else kinds)
        out = {kind: self.key_bytes(kind) for kind in dict.fromkeys(("public", *wanted))}
        if key_fingerprint(out["public"]) != self.key_id:
            raise KeyHomeError(f"the public key in {self.root} does not match the key id in its {KEYSET_FILE}")
        return out

    def load_backend(self, *, kinds: Iterable[str] | None = None, **options: Any) -> CkksBackend:
        """The server-side backend: every key of the folder (or ``kinds``), no secret key (``threads=`` etc.)."""
        _refuse_secrets(self.root)  # again: the folder may have changed since load()
        backend = backend_class(self.backend).from_public_keys(self.params, self.keys(kinds), **options)
        if backend.has_secret_key:
            raise KeyHomeError(f"the backend loaded from {self.root} holds a secret key; refusing to use it")
        return backend

    def info(self) -> dict[str, Any]:
        """What :func:`load_public_backend` returns beside the backend."""
        return {"dir": str(self.root), "backend": self.backend, "key_id": self.key_id, "params": self.params,
                "stride": self.stride, "resolution": self.resolution, "key_kinds": list(self.key_kinds)}


def load_public_backend(public_dir: str | os.PathLike[str], **options: Any) -> tuple[CkksBackend, dict[str, Any]]:
    """Server side: (backend from every key of the public folder, :meth:`PublicKeys.info`); never a secret."""
    keys = PublicKeys.load(public_dir)
    return keys.load_backend(**options), keys.info()


# -- helpers ------------------------------------------------------------------------------------------------
def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (no second copy of the keys), else a private copy."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        _write_private(dst, src.read_bytes())


def _check_public_target(out: Path, home: Path | None, overwrite: bool) -> None:
    """Refuse a public folder that is the home, holds a secret key, or holds keys and ``overwrite`` is off."""
    if home is not None and (out.resolve() == home.resolve() or out.resolve().is_relative_to(home.resolve())
                             or home.resolve().is_relative_to(out.resolve())):
        raise KeyHomeError(f"the public key folder must be outside the key home {home} (and not hold it): it "
                           "would sit beside the secret keys; choose another folder")
    _refuse_secrets(out)
    if (out / KEYSET_FILE).exists() and not overwrite:
        raise KeyHomeError(f"{out} already holds public keys; pass --force to replace them")


def _refuse_secrets(root: Path) -> None:
    """KeyHomeError when ``root`` (or its eval/) holds a file that is or looks like a secret key."""
    names = [p.name for p in (root.iterdir() if root.is_dir() else ())]
    for sub in (EVAL_DIR, MATCH_DIR, f"{MATCH_DIR}/{EVAL_DIR}"):
        names += [f"{sub}/{p.name}" for p in ((root / sub).iterdir() if (root / sub).is_dir() else ())]
    found = [n for n in names if n == SECRET_FILE or is_secret_kind(n.rsplit("/", 1)[-1].removesuffix(".bin"))]
    if found:
        raise KeyHomeError(f"{root} holds a secret key ({', '.join(found)}): it is a client's key home, not a "
                           "public key folder; give the server only the folder written by --public-out")


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """keyset.json's fields, typed (KeyHomeError when it is not a CryptoFace key set)."""
    try:
        meta = json.loads(meta_path.read_text())
        params = params_from_json(json.dumps(meta["params"]))
        resolution = meta.get("resolution")
        return {
            "backend": str(meta["backend"]),
            "key_id": str(meta["key_id"]),
            "params": params,
            "stride": int(meta.get("stride", 1)),
            "resolution": None if resolution is None else int(resolution),
            "key_kinds": tuple(str(k) for k in meta["key_kinds"]),
            "match_key_id": None if meta.get("match_key_id") is None else str(meta["match_key_id"]),
        }
    except (ValueError, KeyError, TypeError, AttributeError, CryptoFaceError) as exc:
        raise KeyHomeError(f"{meta_path} is not a CryptoFace key set ({exc}); run 'cryptoface keygen'") from exc
