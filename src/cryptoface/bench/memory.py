"""Process memory for the benchmarks: peak RSS, and freeing what a client no longer needs."""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path
from typing import Any

from cryptoface.heap import trim_heap


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    On Linux the high-water mark of the process's own address space (``VmHWM``): ``getrusage``'s ``ru_maxrss``
    survives ``fork`` + ``exec``, so a spawned child would report its parent's peak (the client's keys).
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)  # bytes on macOS, KiB elsewhere


def drop_client_rotation_keys(backend: Any) -> None:
    """Free a client's rotation keys once they are exported (OpenFHE keeps them in a process-wide cache).

    Only so that a benchmark's client and server processes fit the machine's memory together; nothing measured
    on the server side changes.
    """
    release = getattr(backend, "release_rotation_keys", None)  # only OpenFHE caches keys outside the backend
    if release is not None:
        release()
    trim_heap()
