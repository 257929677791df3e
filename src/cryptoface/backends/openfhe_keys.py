"""OpenFHE's process-wide evaluation-key maps, shared safely by every key set a server process holds.

OpenFHE keeps rotation keys and relinearisation keys in static maps keyed by the key set's tag, not in the
backend object. Two consequences for a server that serves several tenants in one process:

* **Races.** Loading a tenant's keys inserts into those maps while another tenant's inference looks keys up in
  them (C++ ``std::map``, with the GIL released): undefined behaviour. :data:`KEY_MAPS` is a readers-writer
  lock: every operation that reads a key (rotation, hoisted rotations, ciphertext product) holds it shared,
  every insertion or flush holds it exclusively, and a waiting writer holds new readers back.
* **Eviction.** The binding can only flush *every* tag's rotation keys at once. A server backend therefore
  keeps references to the key maps it inserted and registers itself in :data:`LOADED`; :func:`unload` flushes
  the maps and inserts every other loaded backend's maps again, so dropping one key set frees its keys and
  leaves the others usable. (Relinearisation keys, one per key set, cannot be flushed per tag and stay.)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class _Loaded(Protocol):
    cc: Any
    _tag: str | None
    _rot_maps: dict[int, Any]


class KeyMapLock:
    """Readers-writer lock, writer-preferring: a flush waits only for the operations already running."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


KEY_MAPS = KeyMapLock()
LOADED: weakref.WeakSet[Any] = weakref.WeakSet()  # server backends whose rotation key maps are inserted


def insert(backend: _Loaded, step: int, key_map: Any) -> None:
    """Insert one rotation key map under the backend's tag and keep a reference for later re-insertion."""
    with KEY_MAPS.writing():
        backend.cc.InsertEvalAutomorphismKey(key_map, backend._tag)
        backend._rot_maps[step] = key_map
        LOADED.add(backend)


def unload(backend: _Loaded) -> None:
    """Drop ``backend``'s rotation keys from the process: flush every tag, re-insert the other loaded backends'."""
    with KEY_MAPS.writing():
        LOADED.discard(backend)
        backend._rot_maps.clear()
        backend.cc.ClearEvalAutomorphismKeys()
        for other in list(LOADED):
            for key_map in other._rot_maps.values():  # loaded backends hold maps only (see insert)
                other.cc.InsertEvalAutomorphismKey(key_map, other._tag)
