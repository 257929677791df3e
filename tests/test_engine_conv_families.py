"""Layout families for the convs: counts of the default (interleaved) family and simulator correctness."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.engine import layout as lay
from cryptoface.engine.evaluator import EncryptedModel
from cryptoface.engine.linear import COST_MODELS
from cryptoface.engine.plan import build_plan, plan_for_levels
from cryptoface.model.random import random_model
from cryptoface.model.reference import forward
from cryptoface.params import default_parameters

SLOTS = 1 << 15
CONVS = ("stem", "block0.conv1", "block0.conv2", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2",
         "block3.conv1", "block3.conv2", "block4.conv1", "block4.conv2")


def _conv_counts(resolution: int, family: str) -> dict[str, int]:
    plan = build_plan(resolution, SLOTS, family=family)
    return {layer.name: layer.count.diagonals for layer in plan.layers if layer.name in CONVS}


def test_default_family_net4_counts() -> None:
    """Net4: stage 2/3 convs of the interleaved family vs the multiplexed one (regression numbers)."""
    assert lay.DEFAULT_FAMILY == "interleaved"
    got = _conv_counts(64, "interleaved")
    mux = _conv_counts(64, "multiplexed")
    assert got == {"stem": 180, "block0.conv1": 288, "block0.conv2": 290, "block1.conv1": 768, "block1.conv2": 416,
                   "block2.conv1": 288, "block2.conv2": 289, "block3.conv1": 384, "block3.conv2": 736,
                   "block4.conv1": 672, "block4.conv2": 673}
    assert sum(got.values()) < 0.8 * sum(mux.values())
    # stage 2 stride-1 convs reach the (MACs / slots) bound of 288, stage 3 is within 1.17x of its 576
    assert got["block2.conv1"] == 288 and got["block4.conv1"] <= 1.17 * 576


@pytest.mark.slow
@pytest.mark.parametrize("resolution", [64, 96, 128])
def test_default_family_is_cheapest_modelled(resolution: int) -> None:
    for name, model in COST_MODELS.items():
        cost = {f: build_plan(resolution, SLOTS, family=f, cost_model=model).totals()["cost_s"]
                for f in ("multiplexed", "polyphase", "phased", "interleaved")}
        assert cost["interleaved"] <= 1.01 * min(cost.values()), (name, cost)
        assert cost["interleaved"] < cost["multiplexed"], (name, cost)


def _forward_error(resolution: int, family: str) -> float:
    params = default_parameters(resolution)
    be = SimulatorBackend(params)
    plan = plan_for_levels(resolution, be.slots, params.levels, family=family)
    be.generate_keys(plan.rotation_keys)
    model = random_model(resolution, 3)
    em = EncryptedModel(model, be, plan)
    x = np.random.default_rng(4).uniform(-1.0, 1.0, (3, resolution, resolution))
    out, _ = em.infer(em.encrypt_input(x), progress=False)
    ref = forward(model, x)
    return float(np.max(np.abs(em.decrypt_template(out) - ref)) / max(1.0, float(np.max(np.abs(ref)))))


@pytest.mark.parametrize(
    ("resolution", "family"),
    [(64, "interleaved"), (64, "phased"),
     pytest.param(96, "interleaved", marks=pytest.mark.slow), pytest.param(128, "interleaved", marks=pytest.mark.slow),
     pytest.param(96, "phased", marks=pytest.mark.slow)],
)
def test_family_forward_matches_reference(resolution: int, family: str) -> None:
    assert _forward_error(resolution, family) <= 1e-9


@pytest.mark.parametrize(("resolution", "n_cts"), [(64, 1), (96, 1), (128, 2)])
def test_input_is_as_few_ciphertexts_as_its_values_need(resolution: int, n_cts: int) -> None:
    """The upload: a dense raster input (3 x 32 x 32 per patch) in ceil(patches * 3072 / slots) ciphertexts."""
    assert build_plan(resolution, SLOTS).input_layout.n_cts == n_cts
