"""Full encrypted forward on the CKKS slot simulator (N = 2^16) against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.engine.evaluator import EncryptedModel
from cryptoface.engine.plan import build_plan
from cryptoface.errors import MissingKeyError
from cryptoface.model.random import random_model
from cryptoface.model.reference import forward
from cryptoface.params import LEVELS, default_parameters


class RecordingSimulator(SimulatorBackend):
    """Simulator that remembers every rotation step it performed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.used: set[int] = set()

    def rotate(self, ct, step):
        self.used.add(step % self.slots)
        return super().rotate(ct, step)

    def rotate_many(self, ct, steps):
        self.used |= {s % self.slots for s in steps}
        return super().rotate_many(ct, steps)


def _run(resolution: int, key_mode: str = "pow2", family: str = "multiplexed", seed: int = 0):
    params = default_parameters(resolution, protocol="one-round")  # the network ends at matching's reserve
    be = RecordingSimulator(params)
    plan = build_plan(resolution, be.slots, family=family, key_mode=key_mode, reserve=LEVELS.matching_reserve)
    be.generate_keys(plan.rotation_keys)
    model = random_model(resolution, seed)
    em = EncryptedModel(model, be, plan)
    x = np.random.default_rng(seed + 1).uniform(-1.0, 1.0, (3, resolution, resolution))
    cts = em.encrypt_input(x)
    out, tmpl = em.infer(cts, progress=False)
    return be, em, out, tmpl, forward(model, x)


@pytest.mark.parametrize(
    ("resolution", "key_mode"),
    [(64, "pow2"), pytest.param(64, "exact", marks=pytest.mark.slow), pytest.param(96, "pow2", marks=pytest.mark.slow),
     pytest.param(128, "pow2", marks=pytest.mark.slow)],
)
def test_simulator_forward_matches_reference(resolution: int, key_mode: str) -> None:
    be, em, out, tmpl, ref = _run(resolution, key_mode)
    got = em.decrypt_template(out)
    assert np.max(np.abs(got - ref)) <= 1e-9 * max(1.0, float(np.max(np.abs(ref))))
    # the level schedule ends at the documented reserve, the template layout is as published
    assert be.level(out) == LEVELS.matching_reserve
    vec = be.decrypt(out)
    mask = np.ones(be.slots, bool)
    mask[tmpl.all_slots()] = False
    assert np.all(vec[mask] == 0.0)
    # replicated template: every replica holds the same (scaled) embedding
    assert tmpl.replicas * tmpl.period == be.slots
    np.testing.assert_allclose(vec[tmpl.all_slots()], np.broadcast_to(tmpl.scale * ref, (tmpl.replicas, 256)),
                               atol=1e-9 * max(1.0, float(np.max(np.abs(ref)))))
    # per-layer records
    assert [r.name for r in em.records] == [layer.name for layer in em.plan.layers]
    assert em.records[-1].level_out == LEVELS.matching_reserve


def test_plan_keys_are_exactly_needed() -> None:
    """The run rotates by exactly the plan's key set; a missing key raises MissingKeyError."""
    be, em, _out, _tmpl, _ref = _run(64)
    assert be.used - {0} == set(em.plan.rotation_keys)
    be2 = SimulatorBackend(be.params)
    be2.generate_keys(sorted(em.plan.rotation_keys)[1:])
    em2 = EncryptedModel(em.model, be2, em.plan)
    with pytest.raises(MissingKeyError):
        em2.infer(em2.encrypt_input(np.zeros((3, 64, 64))), progress=False)
