"""CKKS backend on desilofhe (2.0 on the CPU; 1.17's CUDA build on a GPU), implementing
:class:`cryptoface.backends.protocol.CkksBackend`.

**Licence: desilofhe is proprietary and free for non-commercial use only** (research, education,
personal use); commercial use needs a separate licence from DESILO, redistribution is not allowed, and
papers, theses, public software and talks that use it must acknowledge DESILO. CryptoFace only imports
it when this backend is selected (``pip install 'cryptoface[desilo]'``).

How the protocol maps onto desilofhe:

* ``Engine(max_level=params.levels)``: desilofhe picks the ring degree from the level count itself
  (2^13 for 1-2 levels, 2^14 for 3-6, 2^15 for 8-15, 2^16 from about 18 up to its maximum of 36). The
  backend raises ParameterError when that ring does not give ``params.slots`` slots. The scale and the
  prime sizes are chosen by desilofhe and not exposed, so ``scale_bits``/``first_mod_bits`` are not
  applied; :meth:`CkksParameters.check_security` is still run on our own parameter model.
* ``multiply`` never rescales, but it *labels* the product one level lower straight away (the limbs
  stay until ``rescale``). desilofhe also happily adds such a product to a rescaled ciphertext and
  multiplies it again. The backend therefore wraps each ciphertext with a ``pending`` flag and reports
  ``level = desilo level + pending``, which is the protocol's level, and rejects scale mismatches.
* Rotations use one ``FixedRotationKey`` per step (131 MB at the top level of N = 2^16); a key made at a
  lower level (``rotation_levels``) is much smaller but only rotates ciphertexts at or below that level.
  ``rotate_many`` uses desilofhe's hoisted rotations (``rotate_many`` in 2.0, ``rotate_batch`` in 1.17).
* ``device="gpu"`` runs the engine in desilofhe's CUDA mode (``pip install 'cryptoface[gpu]'``: the
  ``desilofhe-cu130`` 1.17 build, which installs the same ``desilofhe`` module and so replaces the CPU
  package; the newer cu132 build needs a newer NVIDIA driver than 580). Everything else is the same code:
  objects read from bytes are moved to the device (``to_cuda``) where they land in host memory, and the same
  backend runs with ``device="cpu"`` on that build, which is how CI covers the GPU path without a GPU. The GPU
  engine is made without ``thread_count``: with it, 1.17's CUDA mode decrypts garbage at N = 2^14 and NaN at
  2^16 (seen on an H200). 1.17's fixed rotation keys rotate the other way round (right by their delta), which
  the backend hides: a key's step is always the protocol's left rotation.
* ``encode(..., compact=True)`` makes a ``LightPlaintext``: the slot values at one limb (0.5 MB at N = 2^16
  whatever the level, against 0.5 MB per limb for a full plaintext), expanded at each product. It is what a
  plaintext cache holds once its budget for full plaintexts is spent.
* Ciphertexts and keys are serialised with desilofhe's ``serialize_*`` inside the shared framing
  (:mod:`cryptoface.backends.wire`) that carries the key-set id, the parameter fingerprint, the level and the
  pending flag, so bytes from another key set or other parameters are rejected with CiphertextError instead
  of decrypting to garbage.
* desilofhe releases the GIL inside its operations, but one engine is **not** safe to call from several
  Python threads at once: two threads encoding, multiplying and rotating on one engine crash it (a
  segmentation fault at N = 2^14; an abort in the full-size engine test). So ``thread_safe = False`` and the
  encrypted engine runs one thread on it. ``threads`` is passed to the engine as its ``thread_count`` (it did
  not speed up single ops on our 2-vCPU box).
* desilofhe keys carry no id of their own, so :meth:`DesiloBackend.load_secret_key` checks a saved secret key
  by decrypting a probe encrypted under the public key, besides the key-set id in the frame.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import desilofhe
import numpy as np

from cryptoface.backends import wire
from cryptoface.backends.protocol import (
    DEVICES,
    CkksParameters,
    check_level,
    normalise_step,
    pad_slots,
    term_pairs,
)
from cryptoface.errors import (
    BackendUnavailableError,
    CiphertextError,
    CryptoFaceError,
    MissingKeyError,
    ParameterError,
)

_CT_FIELDS = {"level": int, "pending": bool}
_ROTATION_FIELDS = {"step": int, "level": int}
# desilofhe's own errors on bytes it cannot read (and on a key of the wrong ring for the engine)
_LIBRARY_ERRORS = (RuntimeError, ValueError, TypeError)


# desilofhe 2.0 names its hoisted rotation rotate_many, 1.17 (the CUDA build) rotate_batch; the two releases
# do not read each other's bytes, so the generation is part of the parameter fingerprint.
GENERATION = "desilofhe-2" if hasattr(desilofhe.Engine, "rotate_many") else "desilofhe-1"
# A fixed rotation key of delta k rotates left by k in 2.0 and right by k in 1.17: the library's delta of our
# (left) step k is _DIRECTION * k.
_DIRECTION = 1 if GENERATION == "desilofhe-2" else -1


def _fingerprint(params: CkksParameters) -> str:
    return wire.fingerprint(GENERATION, params.log_ring, params.levels)


@dataclass(frozen=True)
class DesiloCiphertext:
    """A desilofhe ciphertext plus what the protocol needs and desilofhe does not track."""

    ct: Any  # desilofhe.Ciphertext
    pending: bool  # product at scale Delta^2, not yet rescaled (desilofhe already labels it level - 1)
    key_id: str

    @property
    def level(self) -> int:
        return int(self.ct.level) + int(self.pending)


class DesiloBackend:
    """desilofhe backend on the CPU or one GPU (non-commercial licence, see the module docstring)."""

    name = "desilofhe"
    thread_safe = False  # see the module docstring

    def __init__(self, params: CkksParameters | None = None, *, threads: int = 1, device: str = "cpu") -> None:
        self.params = params or CkksParameters()
        self.params.check_security()
        self.threads = max(1, int(threads))
        if device not in DEVICES:
            raise ParameterError(f"unknown device {device!r}; choose one of {DEVICES}")
        self.device = device
        try:
            # thread_count is for the CPU mode; the GPU mode is left on desilofhe's own settings
            threads = {"thread_count": self.threads} if device == "cpu" else {}
            self.engine = desilofhe.Engine(max_level=self.params.levels, mode=device, **threads)
        except (RuntimeError, ValueError) as exc:
            if device == "gpu":
                raise BackendUnavailableError(
                    f"desilofhe cannot start on the GPU: {exc}. The GPU mode needs an NVIDIA GPU, its driver and "
                    "the CUDA build of desilofhe (pip install 'cryptoface[gpu]')") from exc
            raise ParameterError(f"desilofhe cannot make an engine with {self.params.levels} levels: {exc}") from exc
        self._hoisted = getattr(self.engine, "rotate_many", None) or self.engine.rotate_batch
        if self.engine.slot_count != self.params.slots:
            raise ParameterError(
                f"desilofhe picks {self.engine.slot_count} slots for {self.params.levels} levels, but the parameters "
                f"ask for {self.params.slots} (log_ring {self.params.log_ring}); desilofhe chooses the ring itself: "
                "use log_ring 16 for 18-36 levels, 15 for 8-15, 14 for 3-6, 13 for 1-2"
            )
        self._fp = _fingerprint(self.params)
        self._key_id: str | None = None
        self._secret: Any = None
        self._public: Any = None
        self._relin: Any = None
        self._rot: dict[int, Any] = {}  # step -> FixedRotationKey
        self._rot_level: dict[int, int] = {}  # step -> highest level its key can rotate

    # -- keys -------------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return self.params.slots

    @property
    def has_secret_key(self) -> bool:
        return self._secret is not None

    @property
    def key_id(self) -> str | None:
        return self._key_id

    def generate_keys(self, rotations: Iterable[int], rotation_levels: Mapping[int, int] | None = None) -> None:
        """Client side: secret, public, relinearisation and one fixed rotation key per step.

        ``rotation_levels`` maps a step to the highest level at which the plan rotates by it; that key is
        then made at that level (much smaller and faster to make). Steps not listed get top-level keys.
        """
        e = self.engine
        levels = {normalise_step(int(k), self.slots): int(v) for k, v in (rotation_levels or {}).items()}
        steps = sorted({normalise_step(int(k), self.slots) for k in rotations} - {0})
        self._secret = e.create_secret_key()
        self._public = e.create_public_key(self._secret)
        self._relin = e.create_relinearization_key(self._secret)
        self._rot, self._rot_level = {}, {}
        for k in steps:
            level = min(self.params.levels, max(0, levels.get(k, self.params.levels)))
            delta = normalise_step(_DIRECTION * k, self.slots)
            if level >= self.params.levels:
                self._rot[k] = e.create_fixed_rotation_key(self._secret, delta)
            else:
                self._rot[k] = e.create_fixed_rotation_key(self._secret, delta, level)
            self._rot_level[k] = level
        self._key_id = secrets.token_hex(8)

    def rotation_steps(self) -> frozenset[int]:
        return frozenset(self._rot)

    def export_evaluation_keys(self, kinds: Iterable[str] | None = None) -> dict[str, bytes]:
        self._require_keys()
        e = self.engine
        exporters = {
            "public": lambda: self._pack("public", {}, e.serialize_public_key(self._public)),
            "relin": lambda: self._pack("relin", {}, e.serialize_relinearization_key(self._relin)),
        }
        for k in sorted(self._rot):
            exporters[f"rotation:{k}"] = lambda k=k: self._pack(
                "rotation", {"step": k, "level": self._rot_level[k]}, e.serialize_fixed_rotation_key(self._rot[k]))
        return wire.export_kinds(exporters, kinds)

    @classmethod
    def screen(cls, params: CkksParameters, kind: str, data: bytes) -> None:
        """Nothing to vet out of process: its deserialisers are fuzzed in the conformance suite and only raise."""

    @classmethod
    def from_public_keys(cls, params: CkksParameters, keys: Mapping[str, bytes], *, threads: int = 1,
                         device: str = "cpu") -> DesiloBackend:
        """Server side: evaluate under a client's exported keys, holding no secret key.

        Every frame is checked before the engine is made, so a bad key set costs no engine."""
        fp = _fingerprint(params)
        public = _unpack(wire.key_entry(keys, "public"), "public", {}, fp, MissingKeyError, "desilofhe public key")
        key_id = public.key_id
        relin = None
        if "relin" in keys:
            relin = _unpack(keys["relin"], "relin", {}, fp, MissingKeyError, "desilofhe relinearisation key", key_id)
        # views into ``keys``: a key set's bytes are held once while all frames are checked (see openfhe.py)
        rotations = wire.rotation_frames(keys, params.slots, lambda data, what: _unpack(
            data, "rotation", _ROTATION_FIELDS, fp, MissingKeyError, f"desilofhe {what}", key_id, copy=False))
        backend = cls(params, threads=threads, device=device)
        backend._key_id = key_id
        backend._public = backend._load_key("public", public.payloads[0], backend.engine.deserialize_public_key)
        if relin is not None:
            backend._relin = backend._load_key("relin", relin.payloads[0],
                                               backend.engine.deserialize_relinearization_key)
        for step, frame in rotations.items():
            backend._load_rotation(step, frame)
        return backend

    def export_secret_key(self) -> bytes:
        """The secret key in the shared framing; keep it on the client."""
        if self._secret is None:
            raise MissingKeyError("this backend holds no secret key to export (server role, or no keys yet)")
        return self._pack("secret", {}, self.engine.serialize_secret_key(self._secret))

    def load_secret_key(self, data: bytes) -> None:
        """Attach a saved secret key; it must be the key set's own (checked with a probe decryption)."""
        key_id = self._require_keys()
        frame = _unpack(data, "secret", {}, self._fp, MissingKeyError, "desilofhe secret key", key_id)
        secret = self._load_key("secret", frame.payloads[0], self.engine.deserialize_secret_key)
        self._check_secret_matches(secret)
        self._secret = secret

    def _check_secret_matches(self, secret: Any) -> None:
        probe = np.linspace(-1.0, 1.0, 16)
        try:
            got = np.real(np.asarray(self.engine.decrypt(self.engine.encrypt(probe, self._public, 0), secret)))
        except _LIBRARY_ERRORS as exc:
            raise MissingKeyError(f"the secret key does not fit this engine: {exc}") from exc
        if not np.allclose(got[: probe.size], probe, atol=1e-3):
            raise MissingKeyError("the secret key does not decrypt under this key set's public key; "
                                  "it belongs to another key set")

    def _load_key(self, kind: str, payload: bytes | memoryview, read: Callable[[bytes], Any]) -> Any:
        try:
            return self._on_device(read(bytes(payload)))  # bytes(b) is b itself; a view is copied, this key only
        except _LIBRARY_ERRORS as exc:
            raise MissingKeyError(f"unreadable desilofhe {kind} key: {exc}") from exc

    def _on_device(self, obj: Any) -> Any:
        """``obj`` in the engine's memory: in GPU mode an object read from bytes may land in host memory."""
        if self.device == "gpu" and not getattr(obj, "is_cuda", True):
            self.engine.to_cuda(obj)
        return obj

    def _load_rotation(self, step: int, frame: wire.Frame) -> None:
        key = self._load_key("rotation", frame.payloads[0], self.engine.deserialize_fixed_rotation_key)
        level = frame.fields["level"]
        # the key knows its own step and level: a header that disagrees is corrupt or forged
        # desilofhe reports a top-level key one level lower at some parameters (N = 2^14, 7 levels, dnum 8: 6),
        # and such a key does rotate top-level ciphertexts; any other difference means the header lies
        reported = {level, level - 1} if level == self.params.levels else {level}
        if normalise_step(_DIRECTION * int(key.delta), self.slots) != step or int(key.level) not in reported:
            raise MissingKeyError(f"the rotation key for step {step} holds step {key.delta} at level {key.level}, "
                                  "not what its name and header say")
        self._rot[step] = key
        self._rot_level[step] = level

    # -- data -------------------------------------------------------------------------------------
    def encode(self, values: np.ndarray, level: int, *, compact: bool = False) -> Any:
        if compact:
            return self.engine.encode_to_light_plaintext(self._pad(values), self._check_level(level))
        return self.engine.encode(self._pad(values), self._check_level(level))

    def plaintext_nbytes(self, pt: Any) -> int:
        return int(pt.nbytes)

    def encrypt(self, values: np.ndarray, level: int | None = None) -> DesiloCiphertext:
        self._require_keys()
        level = self.params.levels if level is None else self._check_level(level)
        ct = self.engine.encrypt(self._pad(values), self._public, level)
        return DesiloCiphertext(ct, False, self._key_id or "")

    def decrypt(self, ct: DesiloCiphertext) -> np.ndarray:
        self._check_ct(ct)
        if self._secret is None:
            raise MissingKeyError("this backend holds no secret key (server role); only the client decrypts")
        if ct.pending:
            raise CiphertextError("decrypting a product that was never rescaled")
        return np.real(np.asarray(self.engine.decrypt(ct.ct, self._secret))).astype(np.float64)

    def level(self, ct: DesiloCiphertext) -> int:
        self._check_ct(ct)
        return ct.level

    # -- arithmetic -------------------------------------------------------------------------------
    def add(self, a: DesiloCiphertext, b: DesiloCiphertext) -> DesiloCiphertext:
        a, b = self._align(a, b)
        return self._new(self.engine.add(a.ct, b.ct), a.pending)

    def sub(self, a: DesiloCiphertext, b: DesiloCiphertext) -> DesiloCiphertext:
        a, b = self._align(a, b)
        return self._new(self.engine.subtract(a.ct, b.ct), a.pending)

    def add_plain(self, ct: DesiloCiphertext, values: np.ndarray) -> DesiloCiphertext:
        self._check_fresh(ct, "add_plain")
        return self._new(self.engine.add(ct.ct, self.engine.encode(self._pad(values), ct.level)), False)

    def mul_plain(self, ct: DesiloCiphertext, pt: Any) -> DesiloCiphertext:
        self._check_fresh(ct, "multiplying")
        if not isinstance(pt, desilofhe.Plaintext | desilofhe.LightPlaintext):
            raise CiphertextError(f"expected a desilofhe plaintext from encode(), got {type(pt).__name__}")
        if pt.level != ct.level:
            raise CiphertextError(f"plaintext encoded for level {pt.level} used at level {ct.level}")
        self._check_can_multiply(ct)
        return self._new(self.engine.multiply(ct.ct, pt), True)

    def mul_scalar(self, ct: DesiloCiphertext, value: float) -> DesiloCiphertext:
        self._check_fresh(ct, "multiplying")
        self._check_can_multiply(ct)
        return self._new(self.engine.multiply(ct.ct, float(value)), True)

    def mul(self, a: DesiloCiphertext, b: DesiloCiphertext) -> DesiloCiphertext:
        self._check_fresh(a, "multiplying")
        self._check_fresh(b, "multiplying")
        a, b = self._align(a, b)
        if self._relin is None:
            raise MissingKeyError("no relinearisation key in this key set")
        self._check_can_multiply(a)
        return self._new(self.engine.multiply(a.ct, b.ct, self._relin), True)

    def rescale(self, ct: DesiloCiphertext) -> DesiloCiphertext:
        self._check_ct(ct)
        if not ct.pending:
            raise CiphertextError("rescale of a ciphertext that holds no pending product")
        return self._new(self.engine.rescale(ct.ct), False)

    def multiply_accumulate(self, cts: Sequence[DesiloCiphertext], pts: Iterable[Any]) -> DesiloCiphertext:
        terms = term_pairs(cts, pts)
        acc = self.mul_plain(*next(terms))
        for ct, pt in terms:
            prod = self.mul_plain(ct, pt)
            if prod.ct.level == acc.ct.level:
                self.engine.add(acc.ct, prod.ct, acc.ct)  # in place: saves one ciphertext allocation per term
            else:
                acc = self.add(acc, prod)
        return self.rescale(acc)

    def rotate(self, ct: DesiloCiphertext, step: int) -> DesiloCiphertext:
        self._check_ct(ct)
        k = normalise_step(step, self.slots)
        if k == 0:
            return ct
        return self._new(self.engine.rotate(ct.ct, self._key_for(k, ct)), ct.pending)

    def rotate_many(self, ct: DesiloCiphertext, steps: Sequence[int]) -> list[DesiloCiphertext]:
        self._check_ct(ct)
        ks = [normalise_step(s, self.slots) for s in steps]
        nonzero = sorted(set(ks) - {0})
        keys = [self._key_for(k, ct) for k in nonzero]
        rotated = dict(zip(nonzero, self._hoisted(ct.ct, keys), strict=True)) if keys else {}
        return [ct if k == 0 else self._new(rotated[k], ct.pending) for k in ks]

    def level_down(self, ct: DesiloCiphertext, level: int) -> DesiloCiphertext:
        self._check_ct(ct)
        if ct.pending:
            raise CiphertextError("level_down of a product that was not rescaled")
        if not 0 <= level <= ct.level:
            raise CiphertextError(f"cannot move a ciphertext from level {ct.level} to {level}")
        if level == ct.level:
            return ct
        return self._new(self.engine.level_down(ct.ct, int(level)), False)

    def synchronize(self) -> None:
        """Wait for the GPU's queued operations (desilofhe's ``sync``; the CPU has none to wait for)."""
        if self.device != "gpu":
            return
        try:
            self.engine.sync()
        except RuntimeError as exc:  # "not in Async GPU mode": operations already return when done
            if "async" not in str(exc).lower():
                raise

    # -- bytes ------------------------------------------------------------------------------------
    def serialize(self, ct: DesiloCiphertext) -> bytes:
        self._check_ct(ct)
        fields = {"level": ct.level, "pending": ct.pending}
        payload = self.engine.serialize_ciphertext(ct.ct)
        return wire.pack(wire.DESILO, "ciphertext", ct.key_id, self._fp, fields, payload)

    def deserialize(self, data: bytes) -> DesiloCiphertext:
        frame = _unpack(data, "ciphertext", _CT_FIELDS, self._fp, CiphertextError, "desilofhe ciphertext", self._key_id)
        try:
            raw = self._on_device(self.engine.deserialize_ciphertext(frame.payloads[0]))
        except _LIBRARY_ERRORS as exc:
            raise CiphertextError(f"malformed desilofhe ciphertext: {exc}") from exc
        ct = DesiloCiphertext(raw, frame.fields["pending"], frame.key_id)
        if ct.level != frame.fields["level"] or not 0 <= ct.level <= self.params.levels:
            raise CiphertextError(f"ciphertext level {ct.level} does not match its header or the parameters")
        self._check_ct(ct)
        return ct

    # -- helpers ----------------------------------------------------------------------------------
    def _require_keys(self) -> str:
        if self._key_id is None or self._public is None:
            raise MissingKeyError("no keys: call generate_keys() (client) or from_public_keys() (server)")
        return self._key_id

    def _pack(self, kind: str, fields: dict[str, int], payload: bytes | bytearray) -> bytes:
        return wire.pack(wire.DESILO, kind, self._require_keys(), self._fp, fields, payload)

    def _pad(self, values: np.ndarray) -> np.ndarray:
        return pad_slots(values, self.slots)

    def _check_level(self, level: int) -> int:
        return check_level(level, self.params.levels)

    def _check_ct(self, ct: object) -> None:
        if not isinstance(ct, DesiloCiphertext):
            raise CiphertextError(f"expected a desilofhe ciphertext from this backend, got {type(ct).__name__}")
        if self._key_id is not None and ct.key_id != self._key_id:
            raise CiphertextError("ciphertext was made under another key set")

    def _check_fresh(self, ct: DesiloCiphertext, what: str) -> None:
        self._check_ct(ct)
        if ct.pending:
            raise CiphertextError(f"{what} a product that was not rescaled; rescale first")

    @staticmethod
    def _check_can_multiply(ct: DesiloCiphertext) -> None:
        if ct.level < 1:
            raise ParameterError("out of levels: the program needs more levels than the parameters provide")

    def _align(self, a: DesiloCiphertext, b: DesiloCiphertext) -> tuple[DesiloCiphertext, DesiloCiphertext]:
        self._check_ct(a)
        self._check_ct(b)
        if a.pending != b.pending:
            raise CiphertextError("adding a rescaled ciphertext to a pending product (different scales)")
        if a.ct.level > b.ct.level:
            a = DesiloCiphertext(self.engine.level_down(a.ct, b.ct.level), a.pending, a.key_id)
        elif b.ct.level > a.ct.level:
            b = DesiloCiphertext(self.engine.level_down(b.ct, a.ct.level), b.pending, b.key_id)
        return a, b

    def _key_for(self, k: int, ct: DesiloCiphertext) -> Any:
        key = self._rot.get(k)
        if key is None:
            raise MissingKeyError(f"no rotation key for step {k} (have {len(self._rot)} steps)")
        if ct.ct.level > self._rot_level[k]:
            raise MissingKeyError(
                f"the rotation key for step {k} was made for level <= {self._rot_level[k]}, "
                f"but the ciphertext is at level {ct.level}"
            )
        return key

    def _new(self, raw: Any, pending: bool) -> DesiloCiphertext:
        return DesiloCiphertext(raw, pending, self._key_id or "")


def _unpack(
    data: object, kind: str, schema: wire.Schema, fp: str, error: type[CryptoFaceError], what: str,
    key_id: str | None = None, copy: bool = True,
) -> wire.Frame:
    """One desilofhe frame with a single payload (every desilofhe object serialises to one blob)."""
    return wire.unpack(data, wire.DESILO, kind, schema, payloads=1, fp=fp, error=error, what=what, key_id=key_id,
                       copy=copy)
