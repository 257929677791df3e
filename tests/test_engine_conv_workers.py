"""The evaluator's thread pool (workers > 1) gives bit-identical results to one worker on the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.engine.evaluator import EncryptedModel
from cryptoface.engine.params import default_parameters
from cryptoface.engine.plan import NETWORK_LEVELS, build_plan
from cryptoface.model.random import random_model


@pytest.mark.parametrize("key_mode", ["pow2", pytest.param("exact", marks=pytest.mark.slow)])
def test_workers_bit_identical(key_mode: str) -> None:
    params = default_parameters(64)
    be = SimulatorBackend(params)
    plan = build_plan(64, be.slots, key_mode=key_mode, reserve=params.levels - NETWORK_LEVELS)
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
