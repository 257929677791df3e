"""The CKKS backend protocol: the small set of operations the encrypted engine needs.

Conventions every backend follows (the shared conformance tests check them):

* ``level`` counts *remaining* multiplicative levels: a fresh ciphertext is at ``params.levels``,
  each :meth:`rescale` lowers it by one, and a ciphertext at level 0 can still be added and decrypted.
* Products are not rescaled implicitly. ``mul_plain``, ``mul_scalar`` and ``mul`` return a ciphertext
  at scale Delta^2 ("pending"); such products at the same level may be added together and are then
  rescaled **once** with :meth:`rescale`. :meth:`multiply_accumulate` is the fused fast path for
  ``rescale(sum_i pt_i * ct_i)`` and is what convolutions use.
* Binary operations on ciphertexts at different levels bring the higher one down first.
* Plaintexts are encoded for a given level (:meth:`encode`), never all at the top level, so weights
  cost memory only where they are used.
* Rotations are cyclic left rotations over ``slots`` real slots; ``rotate(ct, k)`` moves slot i+k to
  slot i. A rotation needs a key for exactly that step (see :meth:`CkksBackend.rotation_steps`);
  composing steps is the engine's job, not the backend's.
* A backend created with :meth:`CkksBackend.from_public_keys` holds no secret key and cannot decrypt until
  the client attaches its saved one with :meth:`CkksBackend.load_secret_key`.
* Bytes (ciphertexts, keys) use one framing (:mod:`cryptoface.backends.wire`) that carries the key-set id
  and a parameter fingerprint; every deserialiser raises only CiphertextError, MissingKeyError or
  ParameterError, whatever the input.
* Options are keywords shared by all backends: ``threads`` (a backend without threads accepts and ignores it)
  and ``device`` (``"cpu"``, or ``"gpu"`` where the backend has a GPU mode; a CPU-only backend refuses "gpu"
  with ParameterError rather than silently running on the CPU).
* ``encode(..., compact=True)`` asks for the backend's smallest plaintext form, for plaintexts that are kept
  (a cache); a backend without one returns its usual plaintext. :meth:`plaintext_nbytes` tells what one holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cryptoface.errors import ParameterError

# HomomorphicEncryption.org standard, 128-bit classical security, ternary (uniform) secret:
# the largest log2(Q*P) allowed for each ring degree N.
HE_STANDARD_128_LOG_QP: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
    65536: 1772,
    131072: 3576,
}


@dataclass(frozen=True)
class CkksParameters:
    """CKKS parameters for a leveled (no bootstrapping) program."""

    log_ring: int = 16  # ring degree N = 2**log_ring, slots = N / 2
    levels: int = 24  # multiplicative levels available to the program
    scale_bits: int = 40  # bits of Delta and of each rescaling prime
    first_mod_bits: int = 60  # bits of q0 (decryption headroom)
    special_mod_bits: int = 60  # bits of each key-switching (special) prime
    key_switch_digits: int = 3  # dnum of hybrid key switching
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ring_degree(self) -> int:
        return 1 << self.log_ring

    @property
    def slots(self) -> int:
        return self.ring_degree // 2

    @property
    def log_q(self) -> int:
        return self.first_mod_bits + self.levels * self.scale_bits

    @property
    def special_primes(self) -> int:
        # hybrid key switching: P must be at least as large as the largest digit. OpenFHE splits the levels + 1
        # limbs into digits of ceil((levels + 1) / dnum) limbs, and the first holds q0, so it is the largest
        per = -(-(self.levels + 1) // self.key_switch_digits)
        digit_bits = self.first_mod_bits + (per - 1) * self.scale_bits
        return -(-digit_bits // self.special_mod_bits)

    @property
    def log_qp(self) -> int:
        """Upper estimate of log2(Q*P) used for the security check."""
        return self.log_q + self.special_primes * self.special_mod_bits

    def check_security(self) -> None:
        """Raise ParameterError unless log2(QP) fits the 128-bit HE-standard bound for N."""
        bound = HE_STANDARD_128_LOG_QP.get(self.ring_degree)
        if bound is None:
            raise ParameterError(f"no 128-bit bound known for ring degree {self.ring_degree}")
        if self.log_qp > bound:
            raise ParameterError(
                f"log2(QP) = {self.log_qp} bits exceeds the 128-bit HE-standard bound of {bound} bits "
                f"for N = {self.ring_degree}; use fewer levels, smaller primes or a larger ring"
            )


@runtime_checkable
class CkksBackend(Protocol):
    """One CKKS implementation (simulator, desilofhe, openfhe)."""

    name: str
    params: CkksParameters
    # Whether several threads may call one backend object at once (on different or shared ciphertexts).
    thread_safe: bool

    @property
    def slots(self) -> int: ...

    @property
    def has_secret_key(self) -> bool: ...

    @property
    def key_id(self) -> str | None:
        """Id of the key set held (None before any keys); ciphertexts and key bytes carry it."""
        ...

    # -- keys -----------------------------------------------------------------------------------
    def generate_keys(self, rotations: Iterable[int]) -> None:
        """Client side: make secret, public, relinearisation and one rotation key per step."""

    def rotation_steps(self) -> frozenset[int]:
        """Rotation steps (normalised to 0..slots-1) that have a key."""
        ...

    def export_evaluation_keys(self, kinds: Iterable[str] | None = None) -> dict[str, bytes]:
        """Public and evaluation keys by kind ("public", "relin", "rotation:<k>"), never the secret; only
        ``kinds`` when given (one key at a time keeps gigabytes of rotation keys out of memory)."""
        ...

    @classmethod
    def from_public_keys(cls, params: CkksParameters, keys: dict[str, bytes], *, threads: int = 1,
                         device: str = "cpu") -> CkksBackend:
        """Server side: evaluate under a client's exported keys, holding no secret key."""
        ...

    @classmethod
    def screen(cls, params: CkksParameters, kind: str, data: bytes) -> None:
        """Vet bytes from an untrusted sender (``kind``: "ciphertext" or a key kind) before this process parses
        them; raises the kind's error. A no-op where the parser cannot take the process down (pure Python, or
        fuzzed bindings); OpenFHE runs its parse in a child process first."""
        ...

    def export_secret_key(self) -> bytes:
        """Client side: the secret key, framed with the key-set id and parameter fingerprint.

        Raises MissingKeyError when this backend holds none. Never send these bytes to a server."""
        ...

    def load_secret_key(self, data: bytes) -> None:
        """Client side: attach a saved secret key to a backend made by :meth:`from_public_keys`.

        A key of another key set or other parameters raises MissingKeyError; malformed bytes raise a
        CryptoFaceError subclass. Afterwards :meth:`decrypt` works and ``has_secret_key`` is True."""

    # -- data -----------------------------------------------------------------------------------
    def encode(self, values: np.ndarray, level: int, *, compact: bool = False) -> Any:
        """Plaintext for ``values`` (length <= slots, zero-padded) at ``level`` and scale Delta; ``compact``: the
        backend's smallest form (expanded again at each product), for plaintexts that are kept."""

    def plaintext_nbytes(self, pt: Any) -> int:
        """Memory one plaintext from :meth:`encode` holds (host or device), for cache budgets and reports."""
        ...

    def encrypt(self, values: np.ndarray, level: int | None = None) -> Any:
        """Fresh ciphertext (public-key encryption) at ``level`` (default: the top)."""

    def decrypt(self, ct: Any) -> np.ndarray:
        """Real slot values (length ``slots``); needs the secret key."""
        ...

    def level(self, ct: Any) -> int:
        """Remaining levels of ``ct``."""
        ...

    # -- arithmetic -----------------------------------------------------------------------------
    def add(self, a: Any, b: Any) -> Any: ...

    def sub(self, a: Any, b: Any) -> Any: ...

    def add_plain(self, ct: Any, values: np.ndarray) -> Any:
        """ct + values (encoded at ct's level and scale)."""

    def mul_plain(self, ct: Any, pt: Any) -> Any:
        """ct * pt, **not** rescaled."""

    def mul_scalar(self, ct: Any, value: float) -> Any:
        """ct * value, **not** rescaled."""

    def mul(self, a: Any, b: Any) -> Any:
        """a * b with relinearisation, **not** rescaled."""

    def rescale(self, ct: Any) -> Any:
        """Divide by Delta, dropping one level."""

    def multiply_accumulate(self, cts: Sequence[Any], pts: Iterable[Any]) -> Any:
        """rescale(sum_i cts[i] * pts[i]): the fused fast path for linear layers.

        ``pts`` may be a generator: each plaintext is taken just before its product and dropped after it,
        so a caller that encodes lazily keeps one plaintext alive instead of the whole sum's."""

    def rotate(self, ct: Any, step: int) -> Any:
        """Cyclic left rotation by ``step`` (needs that step's key)."""

    def rotate_many(self, ct: Any, steps: Sequence[int]) -> list[Any]:
        """Hoisted rotations of one ciphertext by several steps."""
        ...

    def level_down(self, ct: Any, level: int) -> Any:
        """Drop ``ct`` to the lower ``level`` without changing its values."""

    def synchronize(self) -> None:
        """Return once every operation issued so far has finished (a GPU queues them; a no-op on the CPU)."""

    # -- bytes ----------------------------------------------------------------------------------
    def serialize(self, ct: Any) -> bytes: ...

    def deserialize(self, data: bytes) -> Any: ...


_END = object()  # sentinel: the plaintexts ran out


def term_pairs(cts: Sequence[Any], pts: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """The (ciphertext, plaintext) terms of a multiply-accumulate, pulling each plaintext only when its
    term is reached; raises ValueError when there is no term or the counts differ."""
    plain = iter(pts)
    n = 0
    for ct in cts:
        pt = next(plain, _END)
        if pt is _END:
            raise ValueError(f"multiply_accumulate: {len(cts)} ciphertexts but only {n} plaintexts")
        n += 1
        yield ct, pt
    if n == 0:
        raise ValueError("multiply_accumulate needs at least one ciphertext and plaintext")
    if next(plain, _END) is not _END:
        raise ValueError(f"multiply_accumulate: more plaintexts than the {n} ciphertexts")


def normalise_step(step: int, slots: int) -> int:
    """Rotation step as an index in 0..slots-1."""
    return step % slots


def pad_slots(values: np.ndarray, slots: int) -> np.ndarray:
    """``values`` as float64, zero-padded to ``slots`` (ValueError when they do not fit)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size > slots:
        raise ValueError(f"{v.size} values do not fit {slots} slots")
    out = np.zeros(slots)
    out[: v.size] = v
    return out


DEVICES = ("cpu", "gpu")  # the values of the shared ``device`` option


def cpu_only(backend: str, device: str) -> None:
    """ParameterError unless ``device`` is "cpu": for backends without a GPU mode."""
    if device != "cpu":
        raise ParameterError(f"the {backend} backend runs on the CPU only, not on {device!r}; the GPU mode is "
                             "desilofhe's (--backend desilofhe --device gpu)")


def check_level(level: int, levels: int) -> int:
    """``level`` as an int in 0..levels, else ParameterError."""
    if not 0 <= level <= levels:
        raise ParameterError(f"level {level} outside 0..{levels}")
    return int(level)
