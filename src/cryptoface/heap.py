"""The C heap of this process (glibc's malloc): how many arenas it may grow, handing freed pages back, and RSS.

CKKS ciphertexts and keys are native buffers of hundreds of kilobytes to megabytes, allocated and freed by the
backends' threads. glibc gives every thread that contends for the heap an arena of its own (up to 8 per core)
and keeps freed pages in it, so two engine threads left an encrypted Net4 inference holding ~0.6 GB more than
with two arenas (README, Encrypted Net4). :func:`limit_arenas` caps them for the command line; a program that
embeds the library can set ``MALLOC_ARENA_MAX`` itself. Elsewhere than glibc everything here is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

ARENAS = 2  # the command line's cap: one per engine thread on this machine kind
_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc
        return None


_LIBC = _libc()


def limit_arenas(n: int = ARENAS) -> bool:
    """Let glibc make at most ``n`` heap arenas, unless ``MALLOC_ARENA_MAX`` is set (the user's choice wins).

    Call it before threads start: arenas that exist stay. True when the limit was set."""
    if _LIBC is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, int(n)))


def trim_heap() -> None:
    """Give free heap pages back to the operating system (freed key bytes stay resident otherwise)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def rss_bytes() -> int:
    """Resident set size of this process (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


__all__ = ["ARENAS", "limit_arenas", "rss_bytes", "trim_heap"]
