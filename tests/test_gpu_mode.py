"""The GPU mode's code path without a GPU: engine options, device checks, and the benchmark's memory report.

The backend's operations on the GPU are the conformance suite's (``CRYPTOFACE_TEST_DEVICE=gpu`` on a lent GPU,
``scripts/gpu_session.sh``); in CI the same backend code runs on the CPU, under desilofhe 2.0 and under the CUDA
build in CPU mode (``scripts/test.sh``). What a CPU cannot run -- desilofhe starting on a GPU -- is checked here
by recording what the backend asks desilofhe for.
"""

from __future__ import annotations

import os

import pytest

from cryptoface.backends import available_backends
from cryptoface.backends.protocol import CkksParameters
from cryptoface.bench import InferenceOptions, run_inference
from cryptoface.cli.device import check_device
from cryptoface.errors import BackendUnavailableError, ParameterError

PARAMS = CkksParameters(log_ring=14, levels=4)
needs_desilofhe = pytest.mark.skipif("desilofhe" not in available_backends(), reason="desilofhe is not installed")


def test_the_expected_desilofhe_is_the_one_imported():
    """scripts/test.sh's GPU-path stage runs the CUDA build in CPU mode: this fails if 2.0 was imported instead."""
    want = os.environ.get("CRYPTOFACE_EXPECT_DESILOFHE")
    if not want:
        pytest.skip("CRYPTOFACE_EXPECT_DESILOFHE is not set (only the GPU-path stage of scripts/test.sh sets it)")
    from cryptoface.backends import desilo

    assert want == desilo.GENERATION


@needs_desilofhe
def test_gpu_engine_is_made_without_cpu_thread_count(monkeypatch):
    """desilofhe 1.17's CUDA mode with ``thread_count`` decrypts garbage at N = 2^14 and NaN at N = 2^16 (seen on
    an H200): the backend passes the CPU thread count in CPU mode only."""
    import desilofhe

    from cryptoface.backends import desilo

    made = []

    def engine(**kwargs):
        made.append(kwargs)
        if kwargs["mode"] == "gpu":
            raise RuntimeError("CUDA Error: no CUDA-capable device is detected")
        return real(**kwargs)

    real = desilofhe.Engine
    monkeypatch.setattr(desilo.desilofhe, "Engine", engine)
    desilo.DesiloBackend(PARAMS, threads=2)
    with pytest.raises(BackendUnavailableError, match="cannot start on the GPU"):
        desilo.DesiloBackend(PARAMS, threads=2, device="gpu")
    assert made == [{"max_level": 4, "mode": "cpu", "thread_count": 2}, {"max_level": 4, "mode": "gpu"}]


def test_device_checks_before_anything_starts():
    check_device("cpu", "openfhe")  # nothing to check
    with pytest.raises(ParameterError, match="--backend desilofhe"):
        check_device("gpu", "openfhe")
    try:
        check_device("gpu")
    except BackendUnavailableError as exc:  # the usual case here: no GPU, or the CPU build of desilofhe
        assert "GPU" in str(exc)


def test_bench_reports_kept_plaintexts_and_memory():
    report = run_inference(InferenceOptions(backend="simulator", runs=1, keep_plaintexts=True,
                                            plaintext_budget_gb=0.5))
    mem = report.to_dict()["memory"]
    assert report.device == "cpu" and report.prepare_s is not None and report.prepare_s > 0
    kept = mem["plaintexts"]
    one = 2 ** (report.params["log_ring"] - 1) * 8  # a simulator plaintext: one float64 per slot
    # the simulator has no smaller compact form (as OpenFHE): nothing is kept past the budget, the rest is encoded
    # per inference; the key the budget ran out in is dropped whole
    assert 0 < kept["full_bytes"] <= 0.5e9 and kept["full_bytes"] % one == 0
    assert kept["compact"] == 0 and kept["uncached"] > 0 and kept["bytes"] == kept["full_bytes"]
    assert mem["device"] is None and mem["device_peak_bytes"] is None and mem["working_set_bytes"] is None
    assert mem["key_bytes"] > 0 and mem["peak_rss_bytes"] > 0
    assert report.rel_error < 1e-9
    plain = run_inference(InferenceOptions(backend="simulator", runs=1))
    assert plain.prepare_s is None and plain.to_dict()["memory"]["plaintexts"] is None
