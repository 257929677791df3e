"""Weight plaintexts kept between inferences (the GPU mode's cache).

Without a cache the engine encodes every weight diagonal right before its product and drops it (on the CPU a
Net4 at N = 2^16 would need ~51 GB to keep them all). On a GPU the products are so fast that encoding -- the
numpy gather of the diagonals plus the encode -- dominates, and the device has the memory: the cache keeps each
giant step's plaintexts, keyed by (layer, output ciphertext, giant step), so an inference after the first
encodes nothing.

Memory: full plaintexts (one limb per remaining level, the fastest products) are kept until ``budget_bytes``
is spent, then the backend's compact form (desilofhe's ``LightPlaintext``: one limb whatever the level,
expanded at each product; not counted against the budget, being 1/(level+1) of a full one); with
``compact=False`` the rest is encoded per inference as without a cache. The
plaintexts do not depend on the key set, only on the backend, its parameters and the model, so one cache
serves every key set of those parameters (:meth:`PlaintextCache.check_scope`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryptoface.errors import ParameterError

# Share of the GPU's memory given to full plaintexts by default: keys, the working set and compact plaintexts
# take the rest (Net4 at N = 2^16: 4.5 GB of keys, a few GB of working set).
GPU_BUDGET_SHARE = 0.6
CPU_BUDGET_BYTES = 8 * 10**9  # a CPU run that asks for a cache without a budget


def default_plaintext_budget(device: str) -> int:
    """Bytes of full plaintexts kept by default on ``device`` (0 on a GPU that NVML cannot see)."""
    if device != "gpu":
        return CPU_BUDGET_BYTES
    from cryptoface.gpu import device_info

    info = device_info()
    return int(GPU_BUDGET_SHARE * info.total_bytes) if info is not None else 0


Key = tuple[str, int, int]  # (plan layer, output ciphertext or quadratic index, giant step)


@dataclass(frozen=True)
class PlaintextCacheReport:
    """What the cache holds: plaintexts by form, their bytes, the budget and the time spent encoding them."""

    budget_bytes: int
    full: int
    full_bytes: int
    compact: int
    compact_bytes: int
    uncached: int  # plaintexts encoded per use because the budget was spent and compact was off
    encode_s: float

    @property
    def bytes(self) -> int:
        return self.full_bytes + self.compact_bytes


class PlaintextCache:
    """Encoded weight plaintexts by :data:`Key`, within a byte budget (thread-safe)."""

    def __init__(self, budget_bytes: int, *, compact: bool = True) -> None:
        if budget_bytes < 0:
            raise ParameterError(f"a plaintext cache budget cannot be negative ({budget_bytes})")
        self.budget_bytes = int(budget_bytes)
        self.compact = compact
        self._entries: dict[Key, list[Any]] = {}
        self._lock = threading.Lock()
        self._scope: tuple[str, str, str] | None = None
        self._full = self._full_bytes = self._compact = self._compact_bytes = self._uncached = 0
        self._admitted = 0  # full bytes ever admitted: the budget test (held bytes drop when a split key is dropped)
        self._no_compact_form = False  # the backend's compact plaintexts proved no smaller than full ones
        self._encode_s = 0.0

    def check_scope(self, backend: Any, model_id: str) -> None:
        """Bind the cache to the first (backend, parameters, model) it serves; ParameterError for another."""
        scope = (str(backend.name), repr(backend.params), model_id)
        with self._lock:
            if self._scope is None:
                self._scope = scope
            elif self._scope != scope:
                raise ParameterError("this plaintext cache holds another backend's, parameters' or model's "
                                     "plaintexts; use one cache per (backend, parameters, model)")

    def plaintexts(self, key: Key, backend: Any, level: int,
                   vectors: Callable[[], Iterable[np.ndarray]]) -> Iterator[Any]:
        """The plaintexts of ``key`` at ``level``: kept ones, else ``vectors()`` encoded (and kept if the budget
        allows). A generator, so an uncached sum still holds one plaintext at a time."""
        got = self._entries.get(key)
        if got is not None:
            yield from got
            return
        kept: list[Any] = []
        complete = True
        for v in vectors():
            t0 = time.perf_counter()
            pt, keep = self._encode(backend, v, level)
            with self._lock:
                self._encode_s += time.perf_counter() - t0
            if keep:
                kept.append(pt)
            complete = complete and keep
            yield pt
            del pt
        with self._lock:
            if complete:  # a key is served from the cache only when all its plaintexts are there
                self._entries[key] = kept
            else:  # the budget ran out inside this key: its kept part is dropped, and so uncounted
                self._full -= len(kept)
                self._full_bytes -= sum(backend.plaintext_nbytes(p) for p in kept)

    def _encode(self, backend: Any, v: np.ndarray, level: int) -> tuple[Any, bool]:
        """(plaintext, whether it is kept): full while the budget lasts, then compact, else used once. A backend
        whose compact form is no smaller (OpenFHE: it has none) keeps nothing past the budget: its "compact"
        plaintexts would be full ones outside it (a Net4 at N = 2^16 holds ~51 GB of them)."""
        pt = backend.encode(v, level)
        n = backend.plaintext_nbytes(pt)
        with self._lock:
            if self._admitted + n <= self.budget_bytes:
                self._admitted += n
                self._full += 1
                self._full_bytes += n
                return pt, True
            if not self.compact or self._no_compact_form:
                self._uncached += 1
                return pt, False
        compact = backend.encode(v, level, compact=True)
        m = backend.plaintext_nbytes(compact)
        with self._lock:
            if m >= n:
                self._no_compact_form = True
                self._uncached += 1
                return pt, False
            self._compact += 1
            self._compact_bytes += m
        return compact, True

    def report(self) -> PlaintextCacheReport:
        with self._lock:
            return PlaintextCacheReport(self.budget_bytes, self._full, self._full_bytes, self._compact,
                                        self._compact_bytes, self._uncached, self._encode_s)

    def __len__(self) -> int:
        return len(self._entries)


def new_cache(device: str, keep: bool | None = None, budget_bytes: int | None = None, *,
              compact: bool = True) -> PlaintextCache | None:
    """The cache an engine on ``device`` uses: ``keep`` None keeps plaintexts on a GPU only; ``budget_bytes``
    None is :func:`default_plaintext_budget`. None when nothing is kept."""
    if not (device == "gpu" if keep is None else keep):
        return None
    return PlaintextCache(default_plaintext_budget(device) if budget_bytes is None else budget_bytes,
                          compact=compact)
