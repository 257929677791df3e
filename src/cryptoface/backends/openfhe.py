"""CKKS backend on OpenFHE (``openfhe==1.6.1.0.22.4``, CPython 3.10), implementing the backend protocol.

BSD-2-Clause. Install with ``scripts/openfhe-venv.sh`` (the 1.6.1 wheels for 3.11+ need a newer libstdc++
than Debian 12 has).

How the protocol maps onto OpenFHE:

* ``CCParamsCKKSRNS`` with MultiplicativeDepth = ``levels``, ScalingModSize = ``scale_bits``,
  FirstModSize = ``first_mod_bits``, RingDim = 2^``log_ring``, BatchSize = ``slots``, ``FIXEDMANUAL``
  scaling (nothing is rescaled implicitly, so a sum of products is rescaled once) and ``HYBRID`` key
  switching with ``SetNumLargeDigits(key_switch_digits)`` (dnum; the engine's default parameters use 4 with
  42-bit primes: 155 MB per rotation key at N = 2^16 and 30 levels; with 40-bit primes dnum 3 gives 123 MB).
* Security: ``HEStd_128_classic`` whenever log_ring >= 16, so OpenFHE checks the HE-standard table itself
  and a rejected set raises ParameterError. Smaller rings (tests only) use ``HEStd_NotSet`` and our own
  :meth:`CkksParameters.check_security` instead.
* Levels: OpenFHE counts *consumed* levels (``GetLevel()`` is 0 for a fresh ciphertext); the protocol
  level is ``levels - GetLevel()``. A pending product is one with ``GetNoiseScaleDeg() >= 2``; OpenFHE
  would add it to a rescaled ciphertext without complaint under FIXEDMANUAL, so the backend rejects that.
  Plaintexts are encoded with ``MakeCKKSPackedPlaintext(values, 1, consumed_level)``.
* Rotations: ``EvalRotate(ct, k)`` is a left rotation by k, as in the protocol. Keys are made per step
  with ``EvalAutomorphismKeyGen`` so that each step can be exported on its own; hoisting uses
  ``EvalFastRotationPrecompute`` + ``EvalFastRotation``.
* OpenFHE keeps evaluation keys in a process-wide cache keyed by the secret key's tag, and deduplicates
  crypto contexts on deserialisation. :mod:`cryptoface.backends.openfhe_keys` makes that cache safe to share
  (a readers-writer lock around every key lookup and insertion) and lets a server evict one key set's rotation
  keys (:meth:`OpenFHEBackend.unload_keys`). A server backend made with :meth:`from_public_keys` rebuilds the
  context from the serialised one (checked against ``params``) and loads the keys into that cache; it
  holds no secret key object until :meth:`OpenFHEBackend.load_secret_key` attaches one. The key tag is the
  key-set id: ciphertexts, keys and secret keys under another tag are rejected.
* Bytes use the shared framing (:mod:`cryptoface.backends.wire`). Its CRC keeps corrupted bytes away from
  OpenFHE's deserialisers, which kill the whole process on some malformed payloads (a crafted modulus dies
  of SIGFPE). Crafted bytes with a valid CRC can still do that, so bytes from an untrusted sender go through
  :meth:`OpenFHEBackend.screen` first: the same deserialiser runs in a child process
  (:mod:`cryptoface.backends.openfhe_screen`), and only bytes it read cleanly reach this process's parser.
* Threads: OpenFHE parallelises inside each operation with OpenMP, with a thread limit it reads once when
  the library loads. So ``openfhe`` is imported lazily by the first backend, after libgomp's default has
  been set to its ``threads``; later backends in the same process share that count (a warning says so).
  Idle OpenMP workers spin, so threads > 1 is a loss on a busy machine. A probe with a counting Python
  thread (scripts/bench_backends.py) shows this wheel releases the GIL inside EvalRotate/EvalMult.

One module on purpose (~520 lines): every method maps one protocol operation onto OpenFHE, and the framing,
key checks and level bookkeeping they share are private to this binding.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cryptoface.backends import openfhe_keys, openfhe_screen, wire
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


if importlib.util.find_spec("openfhe") is None:  # keeps the registry's availability check cheap and honest
    raise ImportError("No module named 'openfhe'")

openfhe: Any = None  # the module, imported by load_openfhe() once the thread count is known
_LOADED_THREADS: int | None = None


def load_openfhe(threads: int | None = None) -> Any:
    """Import openfhe, fixing its OpenMP thread count first.

    OpenFHE reads ``omp_get_max_threads()`` once, when the library loads, and passes that limit to every
    parallel loop, so ``omp_set_num_threads`` after the import changes nothing (measured: a second thread
    still did half the work). Here libgomp's default is set *before* the import instead. Later calls
    cannot change the count; they warn when asked for a different one.
    """
    global openfhe, _LOADED_THREADS
    if openfhe is None:
        if threads is not None:
            try:
                ctypes.CDLL("libgomp.so.1").omp_set_num_threads(ctypes.c_int(max(1, int(threads))))
            except (OSError, AttributeError):
                os.environ["OMP_NUM_THREADS"] = str(max(1, int(threads)))
        openfhe = importlib.import_module("openfhe")
        try:
            _LOADED_THREADS = int(ctypes.CDLL("libgomp.so.1").omp_get_max_threads())
        except (OSError, AttributeError):
            _LOADED_THREADS = threads
    elif threads is not None and _LOADED_THREADS is not None and threads != _LOADED_THREADS:
        warnings.warn(f"OpenFHE already runs with {_LOADED_THREADS} OpenMP threads in this process; "
                      f"threads={threads} is ignored (it can only be chosen before the first backend)",
                      RuntimeWarning, stacklevel=3)
    return openfhe


@contextlib.contextmanager
def _quiet_stdout():
    """Silence fd 1: the binding prints "CC shared ptr ..." when it deserialises a crypto context."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable fd 1
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _fingerprint(params: CkksParameters) -> str:
    return wire.fingerprint("openfhe-1.6", params.log_ring, params.levels, params.scale_bits, params.first_mod_bits,
                            params.key_switch_digits)


def _unpack(
    data: object, kind: str, fp: str, error: type[CryptoFaceError], what: str, *,
    key_id: str | None = None, schema: wire.Schema | None = None, payloads: int = 1, copy: bool = True,
) -> wire.Frame:
    return wire.unpack(data, wire.OPENFHE, kind, schema or {}, payloads=payloads, fp=fp, error=error, what=what,
                       key_id=key_id, copy=copy)


# key frame kind -> (what it is called in errors, header fields, payload count); the public frame also carries
# the client's crypto context
_KEY_FRAMES: dict[str, tuple[str, wire.Schema, int]] = {
    "public": ("public key", {}, 2),
    "relin": ("relinearisation key", {}, 1),
    "rotation": ("rotation key", {"step": int}, 1),
}


def _key_frame(data: object, kind: str, fp: str, *, key_id: str | None = None, what: str | None = None,
               copy: bool = True) -> wire.Frame:
    """A checked key frame of ``kind`` ("public", "relin" or "rotation"); MissingKeyError otherwise."""
    name, schema, payloads = _KEY_FRAMES[kind]
    return _unpack(data, kind, fp, MissingKeyError, f"OpenFHE {what or name}", key_id=key_id, schema=schema,
                   payloads=payloads, copy=copy)


def _read(read: Any, blob: bytes, error: type[CryptoFaceError], what: str, *, quiet: bool = False) -> Any:
    """``read(blob, BINARY)``, turning OpenFHE's failures (an exception, or None for some garbage) into ``error``.

    ``quiet`` silences fd 1 around the call; only for contexts, since swapping fd 1 is not thread safe."""
    try:
        with _quiet_stdout() if quiet else contextlib.nullcontext():
            obj = read(blob, openfhe.BINARY)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise error(f"unreadable OpenFHE {what}: {exc}") from exc
    if obj is None:
        raise error(f"unreadable OpenFHE {what}: the library returned nothing")
    return obj


def make_context(params: CkksParameters) -> Any:
    """OpenFHE CKKS crypto context for ``params`` (OpenFHE's own 128-bit check at log_ring >= 16)."""
    load_openfhe()
    p = openfhe.CCParamsCKKSRNS()
    p.SetMultiplicativeDepth(params.levels)
    p.SetScalingModSize(params.scale_bits)
    p.SetFirstModSize(params.first_mod_bits)
    p.SetRingDim(params.ring_degree)
    p.SetBatchSize(params.slots)
    p.SetScalingTechnique(openfhe.FIXEDMANUAL)
    p.SetKeySwitchTechnique(openfhe.HYBRID)
    p.SetNumLargeDigits(params.key_switch_digits)
    if params.log_ring >= 16:
        p.SetSecurityLevel(openfhe.HEStd_128_classic)
    else:  # test-sized rings: not in OpenFHE's table at these depths; our own check applies instead
        params.check_security()
        p.SetSecurityLevel(openfhe.HEStd_NotSet)
    try:
        cc = openfhe.GenCryptoContext(p)
    except RuntimeError as exc:
        raise ParameterError(f"OpenFHE rejects these CKKS parameters ({params}): {exc}") from exc
    for feature in (openfhe.PKE, openfhe.KEYSWITCH, openfhe.LEVELEDSHE):
        cc.Enable(feature)
    _check_context(cc, params)
    return cc


def _client_context(blob: bytes, params: CkksParameters) -> Any:
    """The crypto context a client serialised, checked against ``params``."""
    cc = _read(openfhe.DeserializeCryptoContextString, blob, MissingKeyError, "crypto context in the key set",
               quiet=True)
    if cc.GetMultiplicativeDepth() != params.levels:
        raise ParameterError(f"the client's context has depth {cc.GetMultiplicativeDepth()}, not {params.levels}")
    _check_context(cc, params)
    return cc


def _check_context(cc: Any, params: CkksParameters) -> None:
    got = (cc.GetRingDimension(), cc.GetEncodingParams().GetBatchSize())
    if got != (params.ring_degree, params.slots):
        raise ParameterError(f"OpenFHE context has ring/batch {got}, parameters need "
                             f"{(params.ring_degree, params.slots)}")


class OpenFHEBackend:
    """OpenFHE CKKS backend (FIXEDMANUAL, HYBRID key switching)."""

    name = "openfhe"
    thread_safe = True  # the engine's two threads measured: conformance test + full-size Net4 runs

    def __init__(self, params: CkksParameters | None = None, *, threads: int = 1, device: str = "cpu",
                 _context: Any = None) -> None:
        cpu_only(self.name, device)
        self.params = params or CkksParameters()
        load_openfhe(int(threads))
        self.threads = _LOADED_THREADS or int(threads)  # what OpenFHE actually uses
        self.cc = _context if _context is not None else make_context(self.params)
        self._order = self.cc.GetCyclotomicOrder()
        self._fp = _fingerprint(self.params)
        self._tag: str | None = None
        self._secret: Any = None
        self._public: Any = None
        self._has_relin = False
        self._steps: set[int] = set()
        self._rot_maps: dict[int, Any] = {}  # step -> single-entry EvalKeyMap or its bytes (client, for export)
        self._zeros: dict[int, Any] = {}  # level -> exact zero ciphertext made here (see _rebind)

    # -- keys -------------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return self.params.slots

    @property
    def has_secret_key(self) -> bool:
        return self._secret is not None

    @property
    def key_id(self) -> str | None:
        return self._tag

    def generate_keys(self, rotations: Iterable[int], rotation_levels: Mapping[int, int] | None = None) -> None:
        """Client side: key pair, relinearisation key and one rotation key per step.

        ``rotation_levels`` is accepted for interface parity with desilofhe and ignored: OpenFHE 1.6 makes
        every key at the top level (``SetKeyGenLevel`` does not shrink keys).
        """
        del rotation_levels
        steps = sorted({normalise_step(int(k), self.slots) for k in rotations} - {0})
        kp = self.cc.KeyGen()
        self._secret, self._public = kp.secretKey, kp.publicKey
        self._tag = self._secret.GetKeyTag()
        self._steps, self._rot_maps = set(), {}
        self._zeros = {}  # made under the previous key pair
        with openfhe_keys.KEY_MAPS.writing():  # key generation inserts into the process-wide maps
            self.cc.EvalMultKeyGen(self._secret)
            self._has_relin = True
            for k in steps:
                first = not self._tag_has_rotation_keys()
                m = self.cc.EvalAutomorphismKeyGen(self._secret, [self.cc.FindAutomorphismIndex(k)])
                # EvalAutomorphismKeyGen inserts into the global cache; the first map for a tag *becomes* the
                # cache's map and later keys are merged into it, so serialise that one now while it holds one key.
                self._rot_maps[k] = openfhe.Serialize(m, openfhe.BINARY) if first else m
                self._steps.add(k)

    def _tag_has_rotation_keys(self) -> bool:
        try:
            self.cc.GetEvalAutomorphismKeyMap(self._tag)
        except RuntimeError:
            return False
        return True

    def rotation_steps(self) -> frozenset[int]:
        return frozenset(self._steps)

    def release_rotation_keys(self) -> None:
        """Free the rotation keys a client generated, once exported (it never rotates itself).

        OpenFHE keeps them in a process-wide cache that can only be flushed whole; server backends loaded in this
        process get theirs back (:func:`cryptoface.backends.openfhe_keys.unload`)."""
        self.unload_keys()

    def unload_keys(self) -> None:
        """Server side: free this key set's rotation keys from the process (the key cache evicted it)."""
        openfhe_keys.unload(self)
        self._steps.clear()

    def export_evaluation_keys(self, kinds: Iterable[str] | None = None) -> dict[str, bytes]:
        self._require_keys()
        if self._secret is None:
            raise MissingKeyError("only the client backend that generated the keys can export them")
        b = openfhe.BINARY
        exporters = {
            "public": lambda: self._pack("public", {}, openfhe.Serialize(self.cc, b),
                                         openfhe.Serialize(self._public, b)),
            "relin": lambda: self._pack("relin", {}, openfhe.SerializeEvalMultKeyString(b, self._tag)),
        }
        for k in sorted(self._rot_maps):
            exporters[f"rotation:{k}"] = lambda k=k: self._pack("rotation", {"step": k}, self._rotation_blob(k))
        return wire.export_kinds(exporters, kinds)

    def _rotation_blob(self, k: int) -> bytes:
        m = self._rot_maps[k]
        return m if isinstance(m, bytes) else openfhe.Serialize(m, openfhe.BINARY)

    @classmethod
    def from_public_keys(cls, params: CkksParameters, keys: Mapping[str, bytes], *, threads: int = 1,
                         device: str = "cpu") -> OpenFHEBackend:
        """Server side: rebuild the client's context and load its public and evaluation keys.

        Every frame is checked (kind, key set, parameters, checksum) before OpenFHE reads any of them."""
        cpu_only(cls.name, device)
        load_openfhe(int(threads))
        fp = _fingerprint(params)
        public = _key_frame(wire.key_entry(keys, "public"), "public", fp)
        tag = public.key_id
        relin = _key_frame(keys["relin"], "relin", fp, key_id=tag) if "relin" in keys else None
        # every frame checked before OpenFHE reads one, as views into ``keys`` (the bytes are held once, and one
        # key's copy at a time while it is read: the memory budget charges stored + loaded bytes)
        rotations = wire.rotation_frames(keys, params.slots, lambda data, what: _key_frame(
            data, "rotation", fp, key_id=tag, what=what, copy=False))
        backend = cls(params, threads=threads, _context=_client_context(public.payloads[0], params))
        backend._tag = tag
        backend._load_evaluation_keys(public.payloads[1], relin, rotations)
        return backend

    @classmethod
    def screen(cls, params: CkksParameters, kind: str, data: bytes) -> None:
        """Vet bytes from an untrusted sender: frame checks here, OpenFHE's own parse in a child process."""
        fp = _fingerprint(params)
        if kind == "ciphertext":
            frame = _unpack(data, "ciphertext", fp, CiphertextError, "OpenFHE ciphertext", schema=_CT_FIELDS)
            openfhe_screen.screen("ciphertext", frame.payloads, CiphertextError, "ciphertext")
            return
        frame_kind = "rotation" if kind.startswith("rotation:") else kind
        if frame_kind not in _KEY_FRAMES:
            raise MissingKeyError(f"unknown OpenFHE key kind {kind[:80]!r}")
        frame = _key_frame(data, frame_kind, fp, what=f"{kind} key" if frame_kind == "rotation" else None)
        openfhe_screen.screen(frame_kind, frame.payloads, MissingKeyError, f"{kind} key")

    def _load_evaluation_keys(
        self, public: bytes, relin: wire.Frame | None, rotations: Mapping[int, wire.Frame]
    ) -> None:
        self._public = _read(openfhe.DeserializePublicKeyString, public, MissingKeyError, "public key")
        if self._public.GetKeyTag() != self._tag:
            raise MissingKeyError("the public key does not belong to the key set named in its header")
        try:
            if relin is not None:
                with openfhe_keys.KEY_MAPS.writing():  # deserialising inserts into the process-wide map
                    if self._tag not in self.cc.GetAllEvalMultKeys():  # cached when client and server share a process
                        openfhe.DeserializeEvalMultKeyString(relin.payloads[0], openfhe.BINARY)
                self._has_relin = True
            for step, frame in rotations.items():
                key_map = _read(openfhe.DeserializeEvalKeyMapString, bytes(frame.payloads[0]), MissingKeyError,
                                "rotation key")
                openfhe_keys.insert(self, step, key_map)
                self._steps.add(step)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise MissingKeyError(f"unreadable key in the key set: {exc}") from exc

    def export_secret_key(self) -> bytes:
        """The secret key in the shared framing; keep it on the client."""
        if self._secret is None:
            raise MissingKeyError("this backend holds no secret key to export (server role, or no keys yet)")
        return self._pack("secret", {}, openfhe.Serialize(self._secret, openfhe.BINARY))

    def load_secret_key(self, data: bytes) -> None:
        """Attach a saved secret key; its OpenFHE key tag must be this key set's id."""
        tag = self._require_keys()
        frame = _unpack(data, "secret", self._fp, MissingKeyError, "OpenFHE secret key", key_id=tag)
        secret = _read(openfhe.DeserializePrivateKeyString, frame.payloads[0], MissingKeyError, "secret key")
        if secret.GetKeyTag() != tag:
            raise MissingKeyError("the secret key belongs to another key set (its OpenFHE key tag differs)")
        self._secret = secret

    # -- data -------------------------------------------------------------------------------------
    def encode(self, values: np.ndarray, level: int, *, compact: bool = False) -> Any:
        consumed = self.params.levels - self._check_level(level)
        return self.cc.MakeCKKSPackedPlaintext(self._pad(values), 1, consumed)

    def plaintext_nbytes(self, pt: Any) -> int:
        # an encoded OpenFHE plaintext holds one 64-bit word per coefficient and remaining limb
        return self.params.ring_degree * 8 * (self.params.levels - int(pt.GetLevel()) + 1)

    def encrypt(self, values: np.ndarray, level: int | None = None) -> Any:
        self._require_keys()
        level = self.params.levels if level is None else level
        return self.cc.Encrypt(self._public, self.encode(values, level))

    def decrypt(self, ct: Any) -> np.ndarray:
        self._check_ct(ct)
        if self._secret is None:
            raise MissingKeyError("this backend holds no secret key (server role); only the client decrypts")
        if self._pending(ct):
            raise CiphertextError("decrypting a product that was never rescaled")
        try:
            pt = self.cc.Decrypt(self._secret, ct)
        except RuntimeError as exc:
            raise CiphertextError(f"decryption failed (wrong key or too much noise): {exc}") from exc
        pt.SetLength(self.slots)
        return np.asarray(pt.GetRealPackedValue(), dtype=np.float64)

    def level(self, ct: Any) -> int:
        self._check_ct(ct)
        return self.params.levels - ct.GetLevel()

    # -- arithmetic -------------------------------------------------------------------------------
    def add(self, a: Any, b: Any) -> Any:
        a, b = self._align(a, b)
        return self.cc.EvalAdd(a, b)

    def sub(self, a: Any, b: Any) -> Any:
        a, b = self._align(a, b)
        return self.cc.EvalSub(a, b)

    def add_plain(self, ct: Any, values: np.ndarray) -> Any:
        self._check_fresh(ct, "add_plain on")
        return self.cc.EvalAdd(ct, self.cc.MakeCKKSPackedPlaintext(self._pad(values), 1, ct.GetLevel()))

    def mul_plain(self, ct: Any, pt: Any) -> Any:
        self._check_fresh(ct, "multiplying")
        if not isinstance(pt, openfhe.Plaintext):
            raise CiphertextError(f"expected an OpenFHE plaintext from encode(), got {type(pt).__name__}")
        if pt.GetLevel() != ct.GetLevel():
            raise CiphertextError(f"plaintext encoded for level {self.params.levels - pt.GetLevel()} used at level "
                                  f"{self.level(ct)}")
        return self.cc.EvalMult(ct, pt)

    def mul_scalar(self, ct: Any, value: float) -> Any:
        self._check_fresh(ct, "multiplying")
        return self.cc.EvalMult(ct, float(value))

    def mul(self, a: Any, b: Any) -> Any:
        self._check_fresh(a, "multiplying")
        self._check_fresh(b, "multiplying")
        a, b = self._align(a, b)
        if not self._has_relin:
            raise MissingKeyError("no relinearisation key in this key set")
        with openfhe_keys.KEY_MAPS.reading():
            return self.cc.EvalMult(a, b)

    def rescale(self, ct: Any) -> Any:
        self._check_ct(ct)
        if not self._pending(ct):
            raise CiphertextError("rescale of a ciphertext that holds no pending product")
        if self.level(ct) < 1:
            raise ParameterError("out of levels: the program needs more levels than the parameters provide")
        return self.cc.Rescale(ct)

    def multiply_accumulate(self, cts: Sequence[Any], pts: Iterable[Any]) -> Any:
        # EvalLinearWSum only takes scalar weights, so: EvalMult per term, EvalAddInPlace, one Rescale.
        terms = term_pairs(cts, pts)
        acc = self.mul_plain(*next(terms))
        for ct, pt in terms:
            prod = self.mul_plain(ct, pt)
            if prod.GetLevel() == acc.GetLevel():
                self.cc.EvalAddInPlace(acc, prod)
            else:
                acc = self.add(acc, prod)
        return self.rescale(acc)

    def rotate(self, ct: Any, step: int) -> Any:
        self._check_ct(ct)
        k = normalise_step(step, self.slots)
        if k == 0:
            return ct
        self._require_step(k)
        with openfhe_keys.KEY_MAPS.reading():
            return self.cc.EvalRotate(ct, k)

    def rotate_many(self, ct: Any, steps: Sequence[int]) -> list[Any]:
        self._check_ct(ct)
        ks = [normalise_step(s, self.slots) for s in steps]
        nonzero = sorted(set(ks) - {0})
        for k in nonzero:
            self._require_step(k)
        out: dict[int, Any] = {0: ct}
        with openfhe_keys.KEY_MAPS.reading():
            if len(nonzero) == 1:
                out[nonzero[0]] = self.cc.EvalRotate(ct, nonzero[0])
            elif nonzero:
                pre = self.cc.EvalFastRotationPrecompute(ct)
                for k in nonzero:
                    out[k] = self.cc.EvalFastRotation(ct, k, self._order, pre)
        return [out[k] for k in ks]

    def level_down(self, ct: Any, level: int) -> Any:
        self._check_ct(ct)
        if self._pending(ct):
            raise CiphertextError("level_down of a product that was not rescaled")
        current = self.level(ct)
        if not 0 <= level <= current:
            raise CiphertextError(f"cannot move a ciphertext from level {current} to {level}")
        if level == current:
            return ct
        return self.cc.LevelReduce(ct, None, current - level)

    def synchronize(self) -> None:
        """Nothing is queued: every operation has finished when it returns."""

    # -- bytes ------------------------------------------------------------------------------------
    def serialize(self, ct: Any) -> bytes:
        self._check_ct(ct)
        fields = {"level": self.level(ct), "pending": self._pending(ct)}
        return wire.pack(wire.OPENFHE, "ciphertext", ct.GetKeyTag(), self._fp, fields,
                         openfhe.Serialize(ct, openfhe.BINARY))

    def deserialize(self, data: bytes) -> Any:
        frame = _unpack(data, "ciphertext", self._fp, CiphertextError, "OpenFHE ciphertext", key_id=self._tag,
                        schema=_CT_FIELDS)
        ct = _read(openfhe.DeserializeCiphertextString, frame.payloads[0], CiphertextError, "ciphertext")
        self._check_ct(ct)
        level, pending = self.level(ct), self._pending(ct)
        if (level, pending) != (frame.fields["level"], frame.fields["pending"]) or not 0 <= level <= self.params.levels:
            raise CiphertextError(f"ciphertext level {level} or scale does not match its header or the parameters")
        if ct.GetKeyTag() != frame.key_id:
            raise CiphertextError("ciphertext key tag does not match its header; the bytes are corrupt")
        return self._rebind(ct)

    def _rebind(self, ct: Any) -> Any:
        """The same ciphertext, carrying this context's ring parameters instead of its deserialised copy.

        A deserialised ciphertext brings its own copy of the parameters, and every ciphertext x plaintext
        product with it, or with anything computed from it, then costs ~100 ms instead of ~17 ms (N = 2^16,
        30 levels). That made a served inference 1.5x slower than ``bench``'s in-memory one (851 s vs 554-567 s).
        ``EvalAdd`` keeps its first operand's parameters, so adding the ciphertext to an exact zero (a
        fresh encryption minus itself) made in this process gives the same polynomials, with no added noise.
        """
        if self._public is None or self._pending(ct):
            return ct
        level = self.level(ct)
        zero = self._zeros.get(level)
        if zero is None:
            fresh = self.cc.Encrypt(self._public, self.encode(np.zeros(self.slots), level))
            zero = self._zeros[level] = self.cc.EvalSub(fresh, fresh)
        if zero.GetScalingFactor() != ct.GetScalingFactor():
            return ct
        return self.cc.EvalAdd(zero, ct)

    # -- helpers ----------------------------------------------------------------------------------
    def _require_keys(self) -> str:
        if self._tag is None or self._public is None:
            raise MissingKeyError("no keys: call generate_keys() (client) or from_public_keys() (server)")
        return self._tag

    def _pack(self, kind: str, fields: dict[str, int], *payloads: bytes) -> bytes:
        return wire.pack(wire.OPENFHE, kind, self._require_keys(), self._fp, fields, *payloads)

    def _require_step(self, k: int) -> None:
        if k not in self._steps:
            raise MissingKeyError(f"no rotation key for step {k} (have {len(self._steps)} steps)")

    def _pad(self, values: np.ndarray) -> list[float]:
        return pad_slots(values, self.slots).tolist()

    def _check_level(self, level: int) -> int:
        return check_level(level, self.params.levels)

    def _check_ct(self, ct: object) -> None:
        if not isinstance(ct, openfhe.Ciphertext):
            raise CiphertextError(f"expected an OpenFHE ciphertext, got {type(ct).__name__}")
        if self._tag is not None and ct.GetKeyTag() != self._tag:
            raise CiphertextError("ciphertext was made under another key set")

    @staticmethod
    def _pending(ct: Any) -> bool:
        return ct.GetNoiseScaleDeg() >= 2

    def _check_fresh(self, ct: Any, what: str) -> None:
        self._check_ct(ct)
        if self._pending(ct):
            raise CiphertextError(f"{what} a product that was not rescaled; rescale first")

    def _align(self, a: Any, b: Any) -> tuple[Any, Any]:
        self._check_ct(a)
        self._check_ct(b)
        if self._pending(a) != self._pending(b):
            raise CiphertextError("adding a rescaled ciphertext to a pending product (different scales)")
        la, lb = a.GetLevel(), b.GetLevel()  # consumed levels
        if la < lb:
            a = self.cc.LevelReduce(a, None, lb - la)
        elif lb < la:
            b = self.cc.LevelReduce(b, None, la - lb)
        return a, b
