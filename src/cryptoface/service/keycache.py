"""Loaded key sets, bounded by the memory budget in bytes (not by count: one OpenFHE key set is ~4.4 GB).

A request pins the key set it uses; only unpinned (idle) key sets are evicted, least recently used first, when a
reservation does not fit. Two requests for a key set that is not loaded yet share one load. A key set whose keys
change or that is deleted is forgotten at once; its bytes stay charged until its last request ends.

A state's memory is freed when the cache drops it: its ``close()`` runs first (OpenFHE keeps rotation keys in a
process-wide map, not in the backend object, so the state must unload them: see
:mod:`cryptoface.backends.openfhe_keys`), then the last reference goes, then the budget gets the bytes back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptoface.service.budget import MemoryBudget


@dataclass
class _Entry:
    cost: int
    pins: int = 0
    state: Any = None
    error: BaseException | None = None
    charged: bool = True
    ready: threading.Event = field(default_factory=threading.Event)


class KeySetCache:
    """key id -> loaded state, charged to ``budget`` (which evicts idle entries through :meth:`evict`)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.loads = 0
        self.evictions = 0
        budget.add_evictor(self.evict)

    @contextmanager
    def use(self, key_id: str, cost: Callable[[], int], load: Callable[[], Any]) -> Iterator[Any]:
        """The loaded state of ``key_id``, pinned for the block; ``cost()`` and ``load()`` run only on a miss.

        Raises BusyError when the key set cannot be charged even after evicting every idle one."""
        entry, loader = self._pin(key_id, cost)
        try:
            if loader:
                try:
                    entry.state = load()
                    self.loads += 1
                except BaseException as exc:
                    entry.error = exc
                    with self.budget.lock:
                        if self._entries.get(key_id) is entry:
                            del self._entries[key_id]
                    raise
                finally:
                    entry.ready.set()
            else:
                entry.ready.wait()
                if entry.error is not None:
                    raise entry.error
            yield entry.state
        finally:
            with self.budget.lock:
                entry.pins -= 1
                if entry.pins == 0 and self._entries.get(key_id) is not entry:
                    self._release(entry)  # forgotten (or failed) while in use: its bytes go back now

    def _pin(self, key_id: str, cost: Callable[[], int]) -> tuple[_Entry, bool]:
        with self.budget.lock:
            entry = self._entries.get(key_id)
            if entry is not None:
                entry.pins += 1
                self._entries.move_to_end(key_id)
                return entry, False
        nbytes = int(cost())  # a store query: outside the lock
        with self.budget.lock:
            entry = self._entries.get(key_id)
            if entry is not None:  # loaded by another request meanwhile
                entry.pins += 1
                self._entries.move_to_end(key_id)
                return entry, False
            self.budget.take(nbytes, "loading a key set")
            entry = _Entry(nbytes, pins=1)
            self._entries[key_id] = entry
            return entry, True

    def _release(self, entry: _Entry) -> None:
        if entry.charged:
            entry.charged = False
            if entry.pins == 0:
                self._drop(entry)  # freed before the budget hands the memory back
            self.budget.give(entry.cost)

    @staticmethod
    def _drop(entry: _Entry) -> None:
        close = getattr(entry.state, "close", None)
        entry.state = None
        if close is not None:
            close()

    def evict(self, nbytes: int) -> int:
        """Drop idle key sets, least recently used first, until ``nbytes`` are freed; returns the bytes freed."""
        freed = 0
        with self.budget.lock:
            for key_id, entry in list(self._entries.items()):
                if freed >= nbytes:
                    break
                if entry.pins == 0 and entry.ready.is_set():
                    del self._entries[key_id]
                    freed += entry.cost if entry.charged else 0
                    self._release(entry)
                    self.evictions += 1
        return freed

    def forget(self, key_id: str) -> None:
        """Drop ``key_id`` (its keys changed or it was deleted); requests holding it finish with what they have."""
        with self.budget.lock:
            entry = self._entries.pop(key_id, None)
            if entry is not None and entry.pins == 0:
                self._release(entry)

    def states(self) -> list[Any]:
        """The loaded states (tests check that none can decrypt)."""
        with self.budget.lock:
            return [e.state for e in self._entries.values() if e.state is not None]

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["KeySetCache"]
