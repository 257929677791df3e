"""The server's memory budget: loaded key sets, request bodies and working sets are charged in bytes.

A reservation that does not fit first evicts idle key sets (through the registered evictors), then is refused
with :class:`BusyError` (HTTP 503 + Retry-After): the server answers "later" instead of being killed for memory.
The budget is for the whole process: what the process holds when the budget is made (interpreter, libraries,
the model's weights) is measured once and set aside as the baseline.

The charges are estimates, modelled on OpenFHE at the project's parameters and checked against what was measured:

* a CKKS ciphertext is 2 polynomials x N coefficients x (levels + 1) RNS towers x 8 bytes (32.5 MB at N = 2^16,
  30 levels: the measured upload); a switching key is ``2 x dnum`` such polynomials over Q and the special
  primes (155 MB: the measured rotation-key size);
* a loaded key set costs its stored bytes x :data:`KEY_LOAD_FACTOR`, and while it is being loaded its stored bytes
  once more (they are read from the store and held until the backend is built);
* one encrypted Net4 inference needs ~7 GB beyond its keys (11.5 GB peak RSS - 4.38 GB of keys, README), i.e.
  :data:`INFER_CIPHERTEXTS` top-level ciphertexts; larger models are charged in proportion to their patches (an
  assumption: only Net4 was measured); matching (normalise, score, 1:N) ~0.5 GB = :data:`MATCH_CIPHERTEXTS`.

Freed memory is handed back to the operating system (glibc's ``malloc_trim``) whenever a large charge is given
back: glibc raises its mmap threshold to the size of the last large block freed (up to 32 MB), so the buffers of a
key set being read (~22 MB each) come from per-thread heaps that keep them after they are freed. Without the trim,
real OpenFHE key sets loaded by several worker threads left the process 0.7 GB above its budget
(scripts/load_test.py, N = 2^14, 3 tenants).

Because the charges are estimates, the server also admits against what the process really holds
(``observe_rss``): a reservation counts the larger of the charges and the resident memory above the baseline.
Memory held for good is moved into the baseline (:meth:`MemoryBudget.retain`: an OpenFHE key set's
relinearisation key, which outlives eviction). Reading a key set holds its stored bytes once (the frames checked
before loading are views into them, :func:`cryptoface.backends.wire.unpack` with ``copy=False``) plus the loaded
keys: a checked copy of every frame once made the full-size load test peak at three times the stored bytes.

The simulator holds almost nothing, so it is charged what OpenFHE would hold at the same parameters: a simulator
load test then makes the same admission decisions as a real one (its RSS stays far below the budget).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cryptoface.backends.protocol import CkksParameters
from cryptoface.heap import rss_bytes, trim_heap
from cryptoface.params import ciphertext_bytes, switching_key_bytes
from cryptoface.service.errors import BusyError

# Loaded / stored bytes of a key set. OpenFHE deserialises each key into polynomials of exactly the serialised
# coefficients plus object headers. Measured by `scripts/load_test.py --backend openfhe --levels 0 measure-keys` (a
# fresh process reads a saved key set and loads it as the server does; default parameters, 28 rotation keys):
# 2.03 GB stored, RSS +2.28 GB once loaded (1.12), 4.32 GB at the peak counting the bytes read (2.12 = stored +
# loaded: both charged). Under load (scripts/load_test.py, 3 tenants' key sets loaded by different worker threads)
# the process stood up to 0.5 GB above the bytes charged at 1.1 (allocator slack); 1.35 covers that.
KEY_LOAD_FACTOR = 1.35
INFER_CIPHERTEXTS = 215
MATCH_CIPHERTEXTS = 16
NET4_PATCHES = 4
DEFAULT_BUDGET_FRACTION = 0.70
TRIM_AT = 32 * 1024 * 1024  # a charge this large given back: return free heap memory to the OS
Evictor = Callable[[int], int]  # asked to free at least n bytes of idle cache; returns the bytes it freed


def key_set_stored(backend: str, params: CkksParameters, stored_bytes: int, n_evaluation_keys: int) -> int:
    """The key set's stored bytes (simulator: what OpenFHE would store for the same keys)."""
    if backend == "simulator":
        return n_evaluation_keys * switching_key_bytes(params) + 2 * ciphertext_bytes(params)
    return int(stored_bytes)


def key_set_cost(backend: str, params: CkksParameters, stored_bytes: int, n_evaluation_keys: int) -> int:
    """Bytes charged while a key set is loaded (simulator: what OpenFHE would hold)."""
    return int(key_set_stored(backend, params, stored_bytes, n_evaluation_keys) * KEY_LOAD_FACTOR)


def working_set(params: CkksParameters, kind: str, patches: int = NET4_PATCHES) -> int:
    """Bytes one request of ``kind`` ("infer" or "match") needs beyond its key set and body."""
    if kind == "infer":
        return INFER_CIPHERTEXTS * ciphertext_bytes(params) * max(patches, NET4_PATCHES) // NET4_PATCHES
    return MATCH_CIPHERTEXTS * ciphertext_bytes(params)


def default_budget() -> int:
    """70 % of the machine's memory (MemTotal), the default of ``cryptoface serve --memory-budget``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(int(line.split()[1]) * 1024 * DEFAULT_BUDGET_FRACTION)
    except (OSError, ValueError):
        pass
    return 8 * 1024**3


class MemoryBudget:
    """Byte accounting with eviction; ``lock`` is shared with the key-set cache so eviction never deadlocks."""

    def __init__(self, limit: int | None = None, *, baseline: int | None = None, retry_after: int = 30,
                 observe_rss: bool = False) -> None:
        """``observe_rss``: admit against the process's real memory too (see :meth:`in_use`); the server turns it
        on, unit tests of the accounting leave it off."""
        self.limit = default_budget() if limit is None else int(limit)
        self.baseline = rss_bytes() if baseline is None else int(baseline)
        self.retry_after = retry_after
        self.observe_rss = observe_rss
        self.lock = threading.RLock()
        self.used = 0
        self.peak = 0
        self.refusals = 0
        self._evictors: list[Evictor] = []

    @property
    def capacity(self) -> int:
        """Bytes that reservations may use: the limit less the baseline."""
        return max(0, self.limit - self.baseline)

    def add_evictor(self, evictor: Evictor) -> None:
        self._evictors.append(evictor)

    def take(self, nbytes: int, what: str) -> None:
        """Charge ``nbytes`` (evicting idle caches if needed) or raise BusyError."""
        if nbytes <= 0:
            return
        with self.lock:
            if self.in_use() + nbytes > self.capacity:
                for evict in self._evictors:
                    evict(self.in_use() + nbytes - self.capacity)
                    if self.in_use() + nbytes <= self.capacity:
                        break
            if self.in_use() + nbytes > self.capacity:
                self.refusals += 1
                raise BusyError(
                    f"the server's memory budget is spent ({what} needs {nbytes / 1e6:.0f} MB, "
                    f"{max(0, self.capacity - self.in_use()) / 1e6:.0f} MB free); retry later", self.retry_after)
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def in_use(self) -> int:
        """Bytes counted as taken: the charges, or with ``observe_rss`` what the process really holds above its
        baseline when that is more (memory the charges miss: allocator slack after an eviction, keys a library
        cannot free). Charged work that has not allocated yet still counts in full."""
        if not self.observe_rss:
            return self.used
        return max(self.used, rss_bytes() - self.baseline)

    def give(self, nbytes: int) -> None:
        with self.lock:
            self.used = max(0, self.used - nbytes)
        if nbytes >= TRIM_AT:
            trim_heap()

    @contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        """Hold ``nbytes`` for the duration of a block."""
        self.take(nbytes, what)
        try:
            yield
        finally:
            self.give(nbytes)

    def retain(self, nbytes: int) -> None:
        """Count ``nbytes`` that the process keeps for good (memory no eviction can free) as baseline: later
        reservations fit in what is left. Never refuses: the memory is already held."""
        with self.lock:
            self.baseline += max(0, int(nbytes))

    def snapshot(self) -> dict[str, int]:
        """Figures for /v1/health (read without the lock: health must answer while a reservation evicts)."""
        return {"limit": self.limit, "baseline": self.baseline, "used": self.used, "peak": self.peak,
                "refusals": self.refusals}


__all__ = [
    "INFER_CIPHERTEXTS",
    "KEY_LOAD_FACTOR",
    "MATCH_CIPHERTEXTS",
    "MemoryBudget",
    "ciphertext_bytes",
    "default_budget",
    "key_set_cost",
    "key_set_stored",
    "rss_bytes",
    "switching_key_bytes",
    "trim_heap",
    "working_set",
]
