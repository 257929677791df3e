"""A short probe of desilofhe's CUDA mode (well under a minute of device time): which engine options give correct
encryptions, and the times of the operations the engine uses. One line per check; a failed check is printed and
the probe goes on. ``scripts/gpu_session.sh`` runs it first.

    python3 scripts/gpu_probe.py     (on the GPU machine, desilofhe-cu130 importable)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import desilofhe
import numpy as np


def per_call_ms(fn: Callable[[], Any], n: int = 5) -> float:
    """Mean milliseconds of ``fn`` over ``n`` calls after one warm-up."""
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def round_trip(levels: int, thread_count: int | None) -> None:
    """Encrypt and decrypt a ramp; print the worst error (thread_count made the CUDA mode decrypt garbage)."""
    t = time.perf_counter()
    options = {} if thread_count is None else {"thread_count": thread_count}
    e = desilofhe.Engine(max_level=levels, mode="gpu", **options)
    sk = e.create_secret_key()
    x = np.linspace(-1, 1, e.slot_count)
    err = np.max(np.abs(np.real(np.asarray(e.decrypt(e.encrypt(x, e.create_public_key(sk), levels), sk))) - x))
    print(f"levels {levels} thread_count {thread_count}: error {err:.3g} ({time.perf_counter() - t:.2f} s)")


def operations(levels: int = 30, level: int = 20) -> None:
    """Times of the engine's operations at ``level`` of a ``levels``-level engine."""
    e = desilofhe.Engine(max_level=levels, mode="gpu")
    sk = e.create_secret_key()
    x = np.linspace(-1, 1, e.slot_count)
    ct = e.encrypt(x, e.create_public_key(sk), level)
    pt, light = e.encode(x, level), e.encode_to_light_plaintext(x, level)
    print(f"encode L{level}: {per_call_ms(lambda: e.encode(x, level)):.2f} ms")
    print(f"ct x pt L{level}: {per_call_ms(lambda: e.multiply(ct, pt)):.2f} ms")
    print(f"ct x light pt L{level}: {per_call_ms(lambda: e.multiply(ct, light)):.2f} ms")
    print(f"plaintext bytes: full {pt.nbytes}, light {light.nbytes}")
    t = time.perf_counter()
    key = e.create_fixed_rotation_key(sk, 5)
    print(f"rotation key: {time.perf_counter() - t:.3f} s to make, "
          f"{len(e.serialize_fixed_rotation_key(key)) / 1e6:.1f} MB")
    print(f"rotate L{level}: {per_call_ms(lambda: e.rotate(ct, key)):.2f} ms")
    got = np.real(np.asarray(e.decrypt(e.rotate(ct, key), sk)))
    print(f"rotation by key delta 5 is a right rotation: error {np.max(np.abs(got - np.roll(x, 5))):.3g}")


def main() -> None:
    checks: list[tuple[str, Callable[[], None]]] = [
        *((f"round trip {lv} levels, thread_count {tc}", lambda lv=lv, tc=tc: round_trip(lv, tc))
          for lv in (4, 30) for tc in (None, 1)),
        ("operations", operations),
    ]
    for name, check in checks:
        try:
            check()
        except Exception as exc:  # a probe reports and goes on
            print(f"{name}: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
