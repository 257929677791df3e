"""The evaluator's thread pool (workers > 1) gives bit-identical results to one worker on the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.engine.evaluator import EncryptedModel
from cryptoface.engine.plan import plan_for_levels
from cryptoface.model.random import random_model
from cryptoface.params import default_parameters


@pytest.mark.parametrize("key_mode", ["pow2", pytest.param("exact", marks=pytest.mark.slow)])
def test_workers_bit_identical(key_mode: str) -> None:
    params = default_parameters(64)
    be = SimulatorBackend(params)
    plan = plan_for_levels(64, be.slots, params.levels, key_mode=key_mode)
    be.generate_keys(plan.rotation_keys)
    model = random_model(64, 5)
    x = np.random.default_rng(6).uniform(-1.0, 1.0, (3, 64, 64))
    outs = []
    for workers in (1, 2, 3):
        em = EncryptedModel(model, be, plan, workers=workers)
        out, _ = em.infer(em.encrypt_input(x), progress=False)
        outs.append(be.decrypt(out))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_default_workers_use_at_most_two_cpus(monkeypatch) -> None:
    import cryptoface.engine.evaluator as ev

    monkeypatch.setattr(ev.os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert ev.default_workers() == ev.MAX_DEFAULT_WORKERS == 2
    monkeypatch.setattr(ev.os, "sched_getaffinity", lambda _pid: {0})
    assert ev.default_workers() == 1
    be = SimulatorBackend(default_parameters(64))
    assert EncryptedModel(random_model(64, 1), be).workers == 1
    assert EncryptedModel(random_model(64, 1), be, workers=3).workers == 3


def test_composed_babies_share_hoisting() -> None:
    # With power-of-two keys, baby steps are reached through a tree of rotations. Every baby rotation is
    # hoisted: children of one parent share one decomposition, so there are far fewer decompositions than
    # baby rotations, and single (unhoisted) rotations are only the giant steps and the pre-reduction.
    params = default_parameters(64)
    be = SimulatorBackend(params)
    plan = plan_for_levels(64, be.slots, params.levels, key_mode="pow2")
    be.generate_keys(plan.rotation_keys)
    em = EncryptedModel(random_model(64, 2), be, plan, workers=1)
    cts = em.encrypt_input(np.zeros((3, 64, 64)))
    be.counters.clear()
    em.infer(cts, progress=False)
    totals = plan.totals()
    assert be.counters["rotate_hoisted"] == totals["baby_rotations"]
    assert be.counters["rotate"] == totals["giant_rotations"] + totals["pre_rotations"]
    assert be.counters["hoist_precompute"] < totals["baby_rotations"] / 2


def test_backend_that_is_not_thread_safe_gets_one_thread() -> None:
    # desilofhe crashes when two threads use one engine: the evaluator must not default to, or accept, more.
    from cryptoface.errors import ParameterError

    be = SimulatorBackend(default_parameters(64))
    be.thread_safe = False
    assert EncryptedModel(random_model(64, 1), be).workers == 1
    with pytest.raises(ParameterError, match="several threads"):
        EncryptedModel(random_model(64, 1), be, workers=2)
