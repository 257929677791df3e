"""The memory budget and the key-set cache on their own: byte accounting, eviction of idle entries only, one load
shared by concurrent requests, and every charge given back (also when a load fails or a key set is forgotten)."""

from __future__ import annotations

import os
import threading
import time
from typing import ClassVar

import pytest

from cryptoface.params import default_parameters
from cryptoface.service.budget import MemoryBudget, ciphertext_bytes, switching_key_bytes
from cryptoface.service.errors import BusyError
from cryptoface.service.keycache import KeySetCache
from cryptoface.service.limits import HeavySlots


def test_estimates_match_the_measured_openfhe_sizes():
    p = default_parameters(64, protocol="one-round")  # N = 2^16, 30 levels, dnum 4 (README: 32.5 MB ciphertext,
    assert abs(ciphertext_bytes(p) / 32.5e6 - 1) < 0.01  # 155 MB rotation key)
    assert abs(switching_key_bytes(p) / 155e6 - 1) < 0.01
    p = default_parameters(64)  # refresh, clear tail: 21 levels, dnum 2 (README: 23.1 MB upload, 1.58 GB for 23 + 1
    assert abs(ciphertext_bytes(p) / 23.07e6 - 1) < 0.01  # keys and the public key)
    assert abs(24 * switching_key_bytes(p) / (1.5605e9) - 1) < 0.01
    p = default_parameters(96)  # the whole network: 23 levels (README: 25.2 MB upload, 1.96 GB for 27 + 1 keys)
    assert abs(ciphertext_bytes(p) / 25.17e6 - 1) < 0.01
    assert abs(28 * switching_key_bytes(p) / 1.963e9 - 1) < 0.02


def test_budget_refuses_with_retry_after_and_evicts_idle_key_sets():
    budget = MemoryBudget(1000, baseline=0, retry_after=9)
    cache = KeySetCache(budget)
    with cache.use("a", lambda: 600, lambda: "A") as state:
        assert state == "A" and budget.used == 600
        with pytest.raises(BusyError) as err:  # "a" is in use: it cannot be evicted
            budget.take(500, "x")
        assert err.value.retry_after == 9 and budget.refusals == 1
    with budget.reserve(500, "x"):  # now idle: evicted to make room
        assert len(cache) == 0 and budget.used == 500
    assert budget.used == 0 and budget.peak <= budget.limit
    budget.take(0, "nothing")  # a zero charge always fits


def test_observed_memory_counts_when_it_exceeds_the_charges(monkeypatch):
    """What the process really holds (RSS above the baseline) is admitted against when it is more than the
    charges: memory the estimates miss makes the server evict and refuse earlier instead of overshooting."""
    from cryptoface.service import budget as budget_module

    rss = [2_000]
    monkeypatch.setattr(budget_module, "rss_bytes", lambda: rss[0])
    budget = MemoryBudget(6_000, baseline=1_000, observe_rss=True)  # capacity 5,000
    budget.take(3_000, "x")  # charged before it is allocated: the charges count
    assert budget.in_use() == 3_000
    rss[0] = 5_000  # the process holds 4,000 above its baseline, 1,000 more than charged
    assert budget.in_use() == 4_000
    with pytest.raises(BusyError, match="0 MB free"):
        budget.take(1_500, "y")
    rss[0] = 3_500  # the real use falls back below the charges: the charges count
    budget.take(1_500, "y")
    assert budget.used == budget.in_use() == 4_500
    blind = MemoryBudget(6_000, baseline=1_000)  # observe_rss off: the charges alone
    rss[0] = 10**9
    blind.take(5_000, "z")
    assert blind.in_use() == 5_000
    budget.retain(500)
    assert budget.baseline == 1_500 and budget.capacity == 4_500


def test_one_load_is_shared_and_failures_give_the_bytes_back():
    budget = MemoryBudget(10_000, baseline=0)
    cache = KeySetCache(budget)
    loads = []

    def slow_load():
        loads.append(1)
        time.sleep(0.2)
        return object()

    seen = []

    def request():
        with cache.use("k", lambda: 100, slow_load) as state:
            seen.append(state)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len({id(s) for s in seen}) == 1 and budget.used == 100

    def broken():
        raise RuntimeError("unreadable keys")

    with pytest.raises(RuntimeError), cache.use("bad", lambda: 300, broken):
        pass
    assert budget.used == 100 and len(cache) == 1
    with cache.use("k", lambda: 100, slow_load):
        cache.forget("k")  # keys changed while in use: charged until the request ends
        assert budget.used == 100
    assert budget.used == 0 and len(cache) == 0


def test_heavy_slots_never_wait():
    slots = HeavySlots(1, retry_after=4)
    with slots.hold():
        with pytest.raises(BusyError) as err, slots.hold():
            pass
        assert err.value.retry_after == 4
        with slots.hold(False):  # not heavy: no slot needed
            pass
    with slots.hold():
        pass


def test_evicted_key_sets_are_closed_before_their_bytes_are_given_back():
    """OpenFHE keeps rotation keys process-wide: dropping a state must unload them (its ``close``), or evicting it
    would free nothing while the budget believed otherwise."""

    class State:
        closed = 0
        charged: ClassVar[list[int]] = []

        def close(self) -> None:
            State.closed += 1
            State.charged.append(budget.used)  # still charged while its memory is being freed

    budget = MemoryBudget(1000, baseline=0)
    cache = KeySetCache(budget)
    with cache.use("ofh", lambda: 600, State):
        pass
    assert State.closed == 0
    budget.take(500, "another key set")  # evicts the idle one: closed, then its 600 bytes given back
    assert State.closed == 1 and State.charged == [600] and budget.used == 500 and len(cache) == 0
    with cache.use("ofh2", lambda: 400, State):
        cache.forget("ofh2")  # deleted while in use: closed when its last request ends
        assert State.closed == 1
    assert State.closed == 2 and State.charged == [600, 900] and budget.used == 500


def test_the_command_line_caps_heap_arenas_unless_the_user_set_them():
    """cryptoface.heap.limit_arenas: set once at start-up, never over a MALLOC_ARENA_MAX the user chose."""
    import subprocess
    import sys

    code = "from cryptoface.heap import limit_arenas; print(limit_arenas())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    theirs = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "4"},
                            capture_output=True, text=True, check=True)
    glibc = sys.platform.startswith("linux")
    assert ours.stdout.strip() == str(glibc) and theirs.stdout.strip() == "False"
