"""Numpy slot simulator of CKKS with the protocol's level and scale bookkeeping.

It holds the slot values in the clear, so it is *not encryption*; it exists to test packing and
level schedules at full size in milliseconds. It enforces what a real backend would enforce —
levels, pending rescales, plaintext levels, rotation keys, modulus headroom — and counts every
operation, so plans can be costed without encryption. ``noise`` adds Gaussian error of that standard
deviation on encryption, rescale and key switching, to mimic CKKS precision.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cryptoface.backends import wire
from cryptoface.backends.protocol import (
    CkksParameters,
    check_level,
    cpu_only,
    normalise_step,
    pad_slots,
    term_pairs,
)
from cryptoface.errors import CiphertextError, CryptoFaceError, MissingKeyError, ParameterError

_CT_FIELDS = {"level": int, "pending": bool}


@dataclass
class SimPlaintext:
    values: np.ndarray
    level: int


@dataclass
class SimCiphertext:
    values: np.ndarray
    level: int
    pending: bool  # a product at scale Delta^2 waiting for its rescale
    key_id: str


class SimulatorBackend:
    """CKKS slot simulator implementing :class:`cryptoface.backends.protocol.CkksBackend`."""

    name = "simulator"
    thread_safe = True

    def __init__(
        self, params: CkksParameters | None = None, *, threads: int = 1, device: str = "cpu", noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        del threads  # accepted for the shared options vocabulary; numpy does the work
        cpu_only(self.name, device)
        self.params = params or CkksParameters()
        self._fp = _fingerprint(self.params)
        self.noise = float(noise)
        self._rng = np.random.default_rng(seed)
        self._steps: frozenset[int] = frozenset()
        self._key_id: str | None = None
        self._secret = False
        self.counters: Counter[str] = Counter()

    # -- keys -------------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return self.params.slots

    @property
    def has_secret_key(self) -> bool:
        return self._secret

    @property
    def key_id(self) -> str | None:
        return self._key_id

    def generate_keys(self, rotations: Iterable[int]) -> None:
        self._key_id = secrets.token_hex(8)
        self._secret = True
        self._steps = frozenset(normalise_step(int(k), self.slots) for k in rotations) - {0}
        self.counters["keygen_rotation"] += len(self._steps)

    def rotation_steps(self) -> frozenset[int]:
        return self._steps

    def export_evaluation_keys(self, kinds: Iterable[str] | None = None) -> dict[str, bytes]:
        """Key frames without payloads: the simulator's keys are only the key-set id and the steps."""
        exporters = {"public": lambda: self._pack("public", {}), "relin": lambda: self._pack("relin", {})}
        for k in sorted(self._steps):
            exporters[f"rotation:{k}"] = lambda k=k: self._pack("rotation", {"step": k})
        return wire.export_kinds(exporters, kinds)

    @classmethod
    def screen(cls, params: CkksParameters, kind: str, data: bytes) -> None:
        """Nothing to vet out of process: pure Python: a malformed frame can only raise."""

    @classmethod
    def from_public_keys(
        cls, params: CkksParameters, keys: Mapping[str, bytes], *, threads: int = 1, device: str = "cpu",
        noise: float = 0.0,
    ) -> SimulatorBackend:
        """Server side: a backend that evaluates under these keys but holds no secret key."""
        backend = cls(params, threads=threads, device=device, noise=noise)
        public = wire.key_entry(keys, "public")
        key_id = backend._unpack(public, "public", {}, MissingKeyError, "simulator public key").key_id
        if "relin" in keys:
            backend._unpack(keys["relin"], "relin", {}, MissingKeyError, "simulator relinearisation key", key_id)
        steps = wire.rotation_frames(keys, backend.slots, lambda data, what: backend._unpack(
            data, "rotation", {"step": int}, MissingKeyError, f"simulator {what}", key_id))
        backend._key_id, backend._steps = key_id, frozenset(steps)
        return backend

    def export_secret_key(self) -> bytes:
        """The simulator's "secret key" is its key-set id: it is not encryption."""
        if not self._secret:
            raise MissingKeyError("this backend holds no secret key to export (server role, or no keys yet)")
        return self._pack("secret", {})

    def load_secret_key(self, data: bytes) -> None:
        """Attach a saved secret key of this backend's key set (see :meth:`from_public_keys`)."""
        key_id = self._require_keys()
        self._unpack(data, "secret", {}, MissingKeyError, "simulator secret key", key_id)
        self._secret = True

    # -- data -------------------------------------------------------------------------------------
    def encode(self, values: np.ndarray, level: int, *, compact: bool = False) -> SimPlaintext:
        self.counters["encode"] += 1
        return SimPlaintext(self._pad(values), self._check_level(level))

    def plaintext_nbytes(self, pt: SimPlaintext) -> int:
        return int(pt.values.nbytes)

    def encrypt(self, values: np.ndarray, level: int | None = None) -> SimCiphertext:
        self._require_keys()
        self.counters["encrypt"] += 1
        level = self.params.levels if level is None else self._check_level(level)
        ct = SimCiphertext(self._noisy(self._pad(values)), level, False, self._key_id or "")
        self._check_headroom(ct)
        return ct

    def decrypt(self, ct: SimCiphertext) -> np.ndarray:
        self._check_ct(ct)
        if not self._secret:
            raise MissingKeyError("this backend holds no secret key (server role); only the client decrypts")
        if ct.pending:
            raise CiphertextError("decrypting a product that was never rescaled")
        self.counters["decrypt"] += 1
        return ct.values.copy()

    def level(self, ct: SimCiphertext) -> int:
        return ct.level

    # -- arithmetic -------------------------------------------------------------------------------
    def add(self, a: SimCiphertext, b: SimCiphertext) -> SimCiphertext:
        a, b = self._align(a, b)
        self.counters["add"] += 1
        return self._new(a.values + b.values, a.level, a.pending)

    def sub(self, a: SimCiphertext, b: SimCiphertext) -> SimCiphertext:
        a, b = self._align(a, b)
        self.counters["add"] += 1
        return self._new(a.values - b.values, a.level, a.pending)

    def add_plain(self, ct: SimCiphertext, values: np.ndarray) -> SimCiphertext:
        self._check_ct(ct)
        if ct.pending:
            raise CiphertextError("add_plain on a product that was not rescaled; rescale first")
        self.counters["add_plain"] += 1
        return self._new(ct.values + self._pad(values), ct.level, False)

    def mul_plain(self, ct: SimCiphertext, pt: SimPlaintext) -> SimCiphertext:
        self._check_fresh(ct)
        if pt.level != ct.level:
            raise CiphertextError(f"plaintext encoded for level {pt.level} used at level {ct.level}")
        self.counters["mul_plain"] += 1
        return self._new(ct.values * pt.values, ct.level, True)

    def mul_scalar(self, ct: SimCiphertext, value: float) -> SimCiphertext:
        self._check_fresh(ct)
        self.counters["mul_scalar"] += 1
        return self._new(ct.values * float(value), ct.level, True)

    def mul(self, a: SimCiphertext, b: SimCiphertext) -> SimCiphertext:
        self._check_fresh(a)
        self._check_fresh(b)
        a, b = self._align(a, b)
        self.counters["mul"] += 1
        return self._new(a.values * b.values, a.level, True)

    def rescale(self, ct: SimCiphertext) -> SimCiphertext:
        self._check_ct(ct)
        if not ct.pending:
            raise CiphertextError("rescale of a ciphertext that holds no pending product")
        if ct.level < 1:
            raise ParameterError("out of levels: the program needs more levels than the parameters provide")
        self.counters["rescale"] += 1
        return self._new(self._noisy(ct.values), ct.level - 1, False)

    def multiply_accumulate(self, cts: Sequence[SimCiphertext], pts: Iterable[SimPlaintext]) -> SimCiphertext:
        terms = term_pairs(cts, pts)
        acc = self.mul_plain(*next(terms))
        for ct, pt in terms:
            acc = self.add(acc, self.mul_plain(ct, pt))
        return self.rescale(acc)

    def rotate(self, ct: SimCiphertext, step: int) -> SimCiphertext:
        self._check_ct(ct)
        k = normalise_step(step, self.slots)
        if k == 0:
            return ct
        if k not in self._steps:
            raise MissingKeyError(f"no rotation key for step {k} (have {len(self._steps)} steps)")
        self.counters["rotate"] += 1
        return self._new(self._noisy(np.roll(ct.values, -k)), ct.level, ct.pending)

    def rotate_many(self, ct: SimCiphertext, steps: Sequence[int]) -> list[SimCiphertext]:
        self._check_ct(ct)
        nonzero = {normalise_step(s, self.slots) for s in steps} - {0}
        if nonzero:
            self.counters["hoist_precompute"] += 1
        out = []
        for s in steps:
            k = normalise_step(s, self.slots)
            if k == 0:
                out.append(ct)
                continue
            if k not in self._steps:
                raise MissingKeyError(f"no rotation key for step {k}")
            self.counters["rotate_hoisted"] += 1
            out.append(self._new(self._noisy(np.roll(ct.values, -k)), ct.level, ct.pending))
        return out

    def level_down(self, ct: SimCiphertext, level: int) -> SimCiphertext:
        self._check_ct(ct)
        if level > ct.level:
            raise CiphertextError(f"cannot raise a ciphertext from level {ct.level} to {level}")
        if ct.pending:
            raise CiphertextError("level_down of a product that was not rescaled")
        self.counters["level_down"] += int(level != ct.level)
        return SimCiphertext(ct.values, level, False, ct.key_id)

    def synchronize(self) -> None:
        """Nothing is queued: every operation has finished when it returns."""

    # -- bytes ------------------------------------------------------------------------------------
    def serialize(self, ct: SimCiphertext) -> bytes:
        self._check_ct(ct)
        fields = {"level": ct.level, "pending": ct.pending}
        return wire.pack(wire.SIMULATOR, "ciphertext", ct.key_id, self._fp, fields, ct.values.astype("<f8").tobytes())

    def deserialize(self, data: bytes) -> SimCiphertext:
        frame = self._unpack(data, "ciphertext", _CT_FIELDS, CiphertextError, "simulator ciphertext", self._key_id,
                             payloads=1)
        (body,) = frame.payloads
        if len(body) != 8 * self.slots:
            raise CiphertextError(f"simulator ciphertext holds {len(body) // 8} slots, "
                                  f"these parameters have {self.slots}")
        values = np.frombuffer(body, "<f8").astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise CiphertextError("simulator ciphertext holds non-finite values; the bytes are corrupt")
        ct = SimCiphertext(values, frame.fields["level"], frame.fields["pending"], frame.key_id)
        self._check_ct(ct)
        return ct

    # -- helpers ----------------------------------------------------------------------------------
    def _require_keys(self) -> str:
        if self._key_id is None:
            raise MissingKeyError("no keys: call generate_keys() (client) or from_public_keys() (server)")
        return self._key_id

    def _pack(self, kind: str, fields: dict[str, int]) -> bytes:
        return wire.pack(wire.SIMULATOR, kind, self._require_keys(), self._fp, fields)

    def _unpack(
        self,
        data: object,
        kind: str,
        schema: wire.Schema,
        error: type[CryptoFaceError],
        what: str,
        key_id: str | None = None,
        payloads: int = 0,
    ) -> wire.Frame:
        return wire.unpack(data, wire.SIMULATOR, kind, schema, payloads=payloads, fp=self._fp, error=error, what=what,
                           key_id=key_id)

    def _pad(self, values: np.ndarray) -> np.ndarray:
        return pad_slots(values, self.slots)

    def _check_level(self, level: int) -> int:
        return check_level(level, self.params.levels)

    def _check_ct(self, ct: object) -> None:
        if not isinstance(ct, SimCiphertext):
            raise CiphertextError(f"expected a simulator ciphertext, got {type(ct).__name__}")
        if self._key_id is not None and ct.key_id != self._key_id:
            raise CiphertextError("ciphertext was made under another key set")
        if not 0 <= ct.level <= self.params.levels:
            raise CiphertextError(f"ciphertext level {ct.level} outside 0..{self.params.levels}")

    def _check_fresh(self, ct: SimCiphertext) -> None:
        self._check_ct(ct)
        if ct.pending:
            raise CiphertextError("multiplying a product that was not rescaled; rescale first")

    def _align(self, a: SimCiphertext, b: SimCiphertext) -> tuple[SimCiphertext, SimCiphertext]:
        self._check_ct(a)
        self._check_ct(b)
        if a.pending != b.pending:
            raise CiphertextError("adding a rescaled ciphertext to a pending product (different scales)")
        level = min(a.level, b.level)
        if a.level != level:
            a = SimCiphertext(a.values, level, a.pending, a.key_id)
        if b.level != level:
            b = SimCiphertext(b.values, level, b.pending, b.key_id)
        return a, b

    def _new(self, values: np.ndarray, level: int, pending: bool) -> SimCiphertext:
        ct = SimCiphertext(values, level, pending, self._key_id or "")
        self._check_headroom(ct)
        return ct

    def _check_headroom(self, ct: SimCiphertext) -> None:
        peak = float(np.max(np.abs(ct.values))) if ct.values.size else 0.0
        if not math.isfinite(peak):
            raise ParameterError("non-finite slot value")
        if peak == 0.0:
            return
        scale_bits = self.params.scale_bits * (2 if ct.pending else 1)
        modulus_bits = self.params.first_mod_bits + ct.level * self.params.scale_bits
        if math.log2(peak) + scale_bits >= modulus_bits - 1:
            raise ParameterError(
                f"value {peak:.3g} at level {ct.level} overflows the modulus ({modulus_bits} bits, "
                f"scale 2^{scale_bits}); bound the activations or keep more levels"
            )

    def _noisy(self, values: np.ndarray) -> np.ndarray:
        if self.noise <= 0.0:
            return values
        return values + self._rng.normal(0.0, self.noise, values.shape)


def _fingerprint(params: CkksParameters) -> str:
    return wire.fingerprint("simulator", params.log_ring, params.levels, params.scale_bits, params.first_mod_bits)
