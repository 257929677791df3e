"""The weight-plaintext cache (the GPU mode's): same templates, nothing encoded after the first inference, the
budget split between full and compact plaintexts, and one cache per backend, parameters and model.

The engine runs the real Net4 plan at N = 2^16 on the simulator, whose encode counter shows what was encoded;
the backends' compact plaintexts are checked against full ones in the conformance suite.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.backends.protocol import CkksParameters
from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.engine.evaluator import EncryptedModel
from cryptoface.engine.plaintexts import PlaintextCache, default_plaintext_budget, new_cache
from cryptoface.engine.plan import plan_for_levels
from cryptoface.errors import ParameterError
from cryptoface.model.random import random_model
from cryptoface.model.reference import forward
from cryptoface.params import default_parameters


class CompactSimulator(SimulatorBackend):
    """A simulator whose compact plaintexts are marked, so the test sees which form the cache kept."""

    def encode(self, values, level, *, compact=False):
        pt = super().encode(values, level)
        pt.compact = compact
        return pt

    def plaintext_nbytes(self, pt):
        return super().plaintext_nbytes(pt) // (8 if getattr(pt, "compact", False) else 1)


@pytest.fixture(scope="module")
def net4():
    params = default_parameters(64)
    be = CompactSimulator(params)
    plan = plan_for_levels(64, be.slots, params.levels)  # the default: Net4's trunk
    be.generate_keys(plan.rotation_keys)
    model = random_model(64, 0)
    x = np.random.default_rng(1).uniform(-1.0, 1.0, (3, 64, 64))
    return be, plan, model, x, forward(model, x)


def _infer(em: EncryptedModel, x: np.ndarray) -> tuple[np.ndarray, int]:
    """(decrypted template, plaintexts encoded by this inference)."""
    before = em.backend.counters["encode"]
    out, _ = em.infer(em.encrypt_input(x), progress=False)
    return em.decrypt_template(out), em.backend.counters["encode"] - before


def test_kept_plaintexts_give_the_same_template_and_are_encoded_once(net4):
    be, plan, model, x, ref = net4
    _, uncached = _infer(EncryptedModel(model, be, plan), x)
    slot_bytes = be.slots * 8
    cache = PlaintextCache(budget_bytes=2000 * slot_bytes)  # room for 2,000 full plaintexts: the rest compact
    em = EncryptedModel(model, be, plan, plaintexts=cache, model_id="random-0")
    first, encoded_first = _infer(em, x)
    report = cache.report()
    assert report.full == 2000 and report.full_bytes == 2000 * slot_bytes
    assert report.compact > 0 and report.compact_bytes == report.compact * slot_bytes // 8
    assert report.uncached == 0
    assert encoded_first == uncached + report.compact  # a compact plaintext is encoded twice: full, then compact
    second, encoded_second = _infer(em, x)
    assert encoded_second == 0
    assert cache.report() == report
    scale = max(1.0, float(np.max(np.abs(ref))))
    assert np.max(np.abs(first - ref)) <= 1e-9 * scale
    np.testing.assert_array_equal(first, second)


def test_without_compact_form_the_rest_is_encoded_per_inference(net4):
    be, plan, model, x, ref = net4
    _, total = _infer(EncryptedModel(model, be, plan), x)
    cache = PlaintextCache(budget_bytes=1000 * be.slots * 8, compact=False)
    em = EncryptedModel(model, be, plan, plaintexts=cache, model_id="random-0")
    _, encoded_first = _infer(em, x)
    report = cache.report()
    assert encoded_first == total
    assert report.compact == 0 and report.uncached > 0
    # the key the budget ran out in is dropped whole (a key is served from the cache entire or not at all)
    assert report.full < 1000 and report.full_bytes == report.full * be.slots * 8
    assert report.full + report.uncached < total
    got, encoded = _infer(em, x)
    assert encoded == total - report.full  # everything not kept, again
    assert np.max(np.abs(got - ref)) <= 1e-9 * max(1.0, float(np.max(np.abs(ref))))


def test_a_backend_without_a_compact_form_keeps_nothing_past_the_budget(net4):
    """OpenFHE has no compact plaintext: its "compact" encode is a full one, which must not be kept outside the
    budget (every Net4 plaintext at N = 2^16 would be: ~51 GB)."""
    _, plan, model, x, ref = net4
    be = SimulatorBackend(net4[0].params)  # compact=True is accepted and ignored, as on OpenFHE
    be.generate_keys(plan.rotation_keys)
    _, total = _infer(EncryptedModel(model, be, plan), x)
    budget = 1000 * be.slots * 8
    cache = PlaintextCache(budget_bytes=budget)  # compact asked for
    em = EncryptedModel(model, be, plan, plaintexts=cache, model_id="random-0")
    first, _ = _infer(em, x)
    report = cache.report()
    assert report.compact == 0 and report.compact_bytes == 0 and report.uncached > 0
    assert 0 < report.full <= 1000 and report.bytes <= budget
    second, encoded = _infer(em, x)
    assert encoded == total - report.full  # everything not kept, encoded again
    assert cache.report().bytes == report.bytes
    np.testing.assert_array_equal(first, second)
    assert np.max(np.abs(first - ref)) <= 1e-9 * max(1.0, float(np.max(np.abs(ref))))


def test_a_cache_serves_one_backend_parameters_and_model(net4):
    be, plan, model, _x, _ref = net4
    cache = PlaintextCache(10**6)
    EncryptedModel(model, be, plan, plaintexts=cache, model_id="random-0")
    EncryptedModel(model, CompactSimulator(be.params), plan, plaintexts=cache, model_id="random-0")  # other keys: ok
    with pytest.raises(ParameterError, match="another"):
        EncryptedModel(model, be, plan, plaintexts=cache, model_id="another-model")
    other = CkksParameters(log_ring=16, levels=be.params.levels, scale_bits=40)
    with pytest.raises(ParameterError, match="another"):
        EncryptedModel(model, CompactSimulator(other), plan, plaintexts=cache, model_id="random-0")
    with pytest.raises(ParameterError):
        PlaintextCache(-1)


def test_defaults():
    assert default_plaintext_budget("cpu") > 0
    assert default_plaintext_budget("gpu") >= 0  # 0 where NVML sees no GPU: everything kept compact
    assert new_cache("cpu") is None and new_cache("gpu", keep=False) is None  # kept on a GPU only, by default
    cache = new_cache("cpu", keep=True, budget_bytes=123, compact=False)
    assert cache is not None and cache.budget_bytes == 123 and not cache.compact
    assert new_cache("gpu") is not None


def test_the_service_keeps_plaintexts_across_requests(tmp_path, faces_dir):
    """The server's path: the first inference of a parameter set fills the cache, later ones (any key set of
    those parameters) encode nothing, and the templates are the same."""
    from cryptoface.client import Client, ClientKeys
    from cryptoface.service import MatchService
    from cryptoface.store import SQLiteStore

    store = SQLiteStore(tmp_path / "faces.db")
    service = MatchService(store, model=random_model(64, 0), model_id="random-0", keep_plaintexts=True,
                           plaintext_budget=2 * 10**9)  # a simulator Net4 needs 1.38 GB
    keys = ClientKeys.generate("simulator", default_parameters(64), resolution=64)
    client = Client.in_process(keys, service, threshold=0.2)
    client.register()
    assert service.plaintext_reports() == {}
    baseline = service.budget.baseline
    first = client.infer(faces_dir / "obama3.jpg")
    ((scope, report),) = service.plaintext_reports().items()
    assert scope.startswith("simulator:cpu:") and report.full > 0 and report.compact == report.uncached == 0
    assert service.budget.baseline == baseline + 2 * 10**9  # a CPU cache's budget is held in the memory budget
    second = client.infer(faces_dir / "obama3.jpg")
    other = Client.in_process(ClientKeys.generate("simulator", default_parameters(64), resolution=64), service,
                              threshold=0.2)
    other.register()
    other.infer(faces_dir / "obama4.jpg")
    assert service.plaintext_reports() == {scope: report}  # nothing encoded after the first inference
    be = keys.backend
    np.testing.assert_array_equal(be.decrypt(be.deserialize(first.ciphertext)),
                                  be.decrypt(be.deserialize(second.ciphertext)))
    store.close()
