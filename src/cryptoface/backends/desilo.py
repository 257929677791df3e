"""CKKS backend on desilofhe 2.0 (CPU), implementing :class:`cryptoface.backends.protocol.CkksBackend`.

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
  ``rotate_many`` uses desilofhe's hoisted ``rotate_many``.
* Ciphertexts and keys are serialised with desilofhe's ``serialize_*`` inside a small header that carries
  the key-set id, the parameter fingerprint, the level and the pending flag, so bytes from another key
  set or other parameters are rejected with CiphertextError instead of decrypting to garbage.
* desilofhe releases the GIL inside its operations, but one engine is **not** safe to call from several
  Python threads at once: two threads encoding, multiplying and rotating on one engine crash it (a
  segmentation fault at N = 2^14; an abort in the full-size engine test). So ``thread_safe = False`` and the
  encrypted engine runs one thread on it. ``thread_count`` is passed to the engine (it did not speed up
  single ops on our 2-vCPU box).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import desilofhe
import numpy as np

from cryptoface.backends.protocol import CkksParameters, normalise_step, term_pairs
from cryptoface.errors import CiphertextError, MissingKeyError, ParameterError

_MAGIC = b"CFDSL1"
_HEAD = struct.Struct("<I")  # length of the JSON header that follows the magic


def _fingerprint(params: CkksParameters) -> str:
    text = f"desilofhe-2|{params.log_ring}|{params.levels}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _frame(meta: dict[str, Any], payload: bytes | bytearray) -> bytes:
    meta = {**meta, "size": len(payload)}
    head = json.dumps(meta, sort_keys=True).encode()
    return b"".join((_MAGIC, _HEAD.pack(len(head)), head, bytes(payload)))


def _unframe(data: bytes | bytearray, what: str, error: type[Exception] = CiphertextError) -> tuple[dict, bytes]:
    data = bytes(data)
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _HEAD.size:
        raise error(f"not a desilofhe {what} from CryptoFace (bad magic or too short)")
    (n,) = _HEAD.unpack_from(data, len(_MAGIC))
    start = len(_MAGIC) + _HEAD.size
    try:
        meta = json.loads(data[start : start + n])
    except ValueError as exc:
        raise error(f"truncated or malformed {what} header") from exc
    payload = data[start + n :]
    if not isinstance(meta, dict) or meta.get("size") != len(payload):
        raise error(f"{what} is truncated or has trailing bytes ({len(payload)} payload bytes, header says "
                    f"{meta.get('size') if isinstance(meta, dict) else '?'})")
    return meta, payload


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
    """desilofhe 2.0 CPU backend (non-commercial licence, see the module docstring)."""

    name = "desilofhe"
    thread_safe = False  # see the module docstring

    def __init__(self, params: CkksParameters | None = None, thread_count: int = 1) -> None:
        self.params = params or CkksParameters()
        self.params.check_security()
        self.thread_count = int(thread_count)
        try:
            self.engine = desilofhe.Engine(max_level=self.params.levels, thread_count=self.thread_count)
        except (RuntimeError, ValueError) as exc:
            raise ParameterError(f"desilofhe cannot make an engine with {self.params.levels} levels: {exc}") from exc
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
            if level >= self.params.levels:
                self._rot[k] = e.create_fixed_rotation_key(self._secret, k)
            else:
                self._rot[k] = e.create_fixed_rotation_key(self._secret, k, level)
            self._rot_level[k] = level
        self._key_id = secrets.token_hex(8)

    def rotation_steps(self) -> frozenset[int]:
        return frozenset(self._rot)

    def export_evaluation_keys(self) -> dict[str, bytes]:
        self._require_keys()
        e = self.engine
        meta = {"key_id": self._key_id, "fp": self._fp}
        keys = {
            "public": _frame({**meta, "kind": "public"}, e.serialize_public_key(self._public)),
            "relin": _frame({**meta, "kind": "relin"}, e.serialize_relinearization_key(self._relin)),
        }
        for k in sorted(self._rot):
            keys[f"rotation:{k}"] = _frame(
                {**meta, "kind": "rotation", "step": k, "level": self._rot_level[k]},
                e.serialize_fixed_rotation_key(self._rot[k]),
            )
        return keys

    @classmethod
    def from_public_keys(
        cls, params: CkksParameters, keys: Mapping[str, bytes], thread_count: int = 1
    ) -> DesiloBackend:
        """Server side: evaluate under a client's exported keys, holding no secret key."""
        backend = cls(params, thread_count=thread_count)
        e = backend.engine
        if "public" not in keys:
            raise MissingKeyError("the key set has no public key")

        def load(name: str, kind: str) -> tuple[dict, bytes]:
            meta, payload = _unframe(keys[name], f"{kind} key", MissingKeyError)
            if meta.get("kind") != kind or meta.get("fp") != backend._fp:
                raise MissingKeyError(f"key {name!r} is not a {kind} key for these parameters")
            if backend._key_id is not None and meta.get("key_id") != backend._key_id:
                raise MissingKeyError(f"key {name!r} belongs to another key set")
            return meta, payload

        try:
            meta, payload = load("public", "public")
            backend._key_id = str(meta["key_id"])
            backend._public = e.deserialize_public_key(payload)
            if "relin" in keys:
                backend._relin = e.deserialize_relinearization_key(load("relin", "relin")[1])
            for name in keys:
                if name.startswith("rotation:"):
                    meta, payload = load(name, "rotation")
                    k = normalise_step(int(meta["step"]), backend.slots)
                    backend._rot[k] = e.deserialize_fixed_rotation_key(payload)
                    backend._rot_level[k] = int(meta["level"])
        except RuntimeError as exc:
            raise MissingKeyError(f"unreadable key in the key set: {exc}") from exc
        return backend

    # -- data -------------------------------------------------------------------------------------
    def encode(self, values: np.ndarray, level: int) -> Any:
        return self.engine.encode(self._pad(values), self._check_level(level))

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
        if not isinstance(pt, desilofhe.Plaintext):
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
        rotated = dict(zip(nonzero, self.engine.rotate_many(ct.ct, keys), strict=True)) if keys else {}
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

    # -- bytes ------------------------------------------------------------------------------------
    def serialize(self, ct: DesiloCiphertext) -> bytes:
        self._check_ct(ct)
        meta = {"kind": "ciphertext", "key_id": ct.key_id, "fp": self._fp, "level": ct.level, "pending": ct.pending}
        return _frame(meta, self.engine.serialize_ciphertext(ct.ct))

    def deserialize(self, data: bytes) -> DesiloCiphertext:
        meta, payload = _unframe(data, "ciphertext")
        if meta.get("kind") != "ciphertext" or meta.get("fp") != self._fp:
            raise CiphertextError("ciphertext was made for other parameters (or is not a ciphertext)")
        if self._key_id is not None and meta.get("key_id") != self._key_id:
            raise CiphertextError("ciphertext was made under another key set")
        try:
            raw = self.engine.deserialize_ciphertext(payload)
        except (RuntimeError, ValueError) as exc:
            raise CiphertextError(f"malformed ciphertext: {exc}") from exc
        ct = DesiloCiphertext(raw, bool(meta.get("pending")), str(meta.get("key_id")))
        if ct.level != meta.get("level"):
            raise CiphertextError("ciphertext level does not match its header")
        self._check_ct(ct)
        return ct

    # -- helpers ----------------------------------------------------------------------------------
    def _require_keys(self) -> None:
        if self._key_id is None or self._public is None:
            raise MissingKeyError("no keys: call generate_keys() (client) or from_public_keys() (server)")

    def _pad(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size > self.slots:
            raise ValueError(f"{v.size} values do not fit {self.slots} slots")
        out = np.zeros(self.slots)
        out[: v.size] = v
        return out

    def _check_level(self, level: int) -> int:
        if not 0 <= level <= self.params.levels:
            raise ParameterError(f"level {level} outside 0..{self.params.levels}")
        return int(level)

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
