"""Memory housekeeping for the benchmarks: a client that has exported its keys need not keep them."""

from __future__ import annotations

import contextlib
import sys
from typing import Any


def drop_client_rotation_keys(backend: Any) -> None:
    """Free a client's rotation keys once they are exported (OpenFHE keeps them in a process-wide cache).

    Only so that a benchmark's client and server processes fit the machine's memory together; nothing measured
    on the server side changes.
    """
    release = getattr(backend, "release_rotation_keys", None)  # only OpenFHE caches keys outside the backend
    if release is not None:
        release()
    trim_heap()


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise: freed key bytes stay resident)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
