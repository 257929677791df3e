"""Proof of possession at registration: only the holder of the secret key can activate a key set.

The server encrypts ``COUNT`` random integers in [0, ``BOUND``) under the submitted public key (a public-key-only
backend: the server can encrypt, never decrypt) and keeps only ``sha256(nonce || "i0,i1,...")``. The client
decrypts, **rounds** each value and returns that hash. Raw decryptions never travel: CKKS decryption noise depends
on the secret key, and handing it to the party that chose the ciphertext is the IND-CPA-D key-recovery setting;
rounded small integers carry none of it. This stops anyone registering someone else's public key as their own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cryptoface.backends.protocol import CkksBackend

COUNT = 16
BOUND = 1000  # far inside CKKS precision at any supported scale: rounding is exact
MAX_FAILED_PROOFS = 5  # then the pending key set is deleted (the client registers again)


@dataclass(frozen=True)
class Challenge:
    """What the client gets: a ciphertext of ``count`` integers (slots 0..count-1) and a nonce (hex)."""

    ciphertext: bytes
    count: int
    nonce: str


def proof_hash(nonce: bytes, values: Sequence[int]) -> str:
    """The expected answer: sha256(nonce || "v0,v1,...") hex (the client computes the same)."""
    return hashlib.sha256(nonce + ",".join(str(int(v)) for v in values).encode()).hexdigest()


def make_challenge(backend: CkksBackend) -> tuple[Challenge, str]:
    """A fresh challenge under ``backend``'s public key and the hash to expect (the only thing the server keeps)."""
    values = [secrets.randbelow(BOUND) for _ in range(COUNT)]
    nonce = secrets.token_bytes(16)
    ct = backend.encrypt(np.asarray(values, dtype=np.float64))  # top level: the most noise headroom
    return Challenge(backend.serialize(ct), COUNT, nonce.hex()), proof_hash(nonce, values)


def proof_matches(expected: str, given: str) -> bool:
    """Constant-time comparison of a submitted proof (hex, any case) with the stored hash."""
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode())


def answer_challenge(decrypted: Sequence[float], count: int, nonce_hex: str) -> str:
    """The client's answer from its decryption: round the first ``count`` slots, hash them with the nonce."""
    ints = [int(np.rint(v)) for v in list(decrypted)[:count]]
    return proof_hash(bytes.fromhex(nonce_hex), ints)


__all__ = ["BOUND", "COUNT", "MAX_FAILED_PROOFS", "Challenge", "answer_challenge", "make_challenge", "proof_hash",
           "proof_matches"]
