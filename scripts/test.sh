#!/usr/bin/env bash
# The test command of the README: lint, the default suite, a bounded set of slow full-size encrypted
# tests, and the backend conformance suite in the environment that has OpenFHE (.venv-openfhe: a
# symlink to .venv where the newest openfhe wheel imports there, else a separate Python 3.10 venv; see
# scripts/openfhe-venv.sh, which installs nothing when .venv-openfhe is .venv).
# Any pytest exit status other than 0 fails this script -- including 5, "no tests were collected".
set -euo pipefail
cd "$(dirname "$0")/.."

run() { echo "== $*"; "$@"; }

# desilofhe's ~21 MB buffers churn glibc's heap in the main thread (20-45 % slower, research/fhe-backends.md §6.4).
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.trim_threshold=17179869184:glibc.malloc.mmap_threshold=33554432}

run .venv/bin/ruff check src tests scripts benchmark
run .venv/bin/python -m pytest -q -m "not slow"
run .venv/bin/python -m pytest -q -m slow
# The GPU backend's code on the CPU: desilofhe's CUDA build (1.17: another API generation than .venv's CPU 2.0)
# in CPU mode, put ahead of 2.0 on PYTHONPATH; CRYPTOFACE_EXPECT_DESILOFHE makes a test fail if it is not.
[ -d .desilofhe-cu130 ] || run .venv/bin/python -m pip install -q --no-deps --target .desilofhe-cu130 \
  desilofhe-cu130==1.17.0
run env PYTHONPATH=.desilofhe-cu130 CRYPTOFACE_EXPECT_DESILOFHE=desilofhe-1 .venv/bin/python -m pytest -q \
  -m "not slow" tests/test_backends_conformance.py tests/test_gpu_mode.py tests/test_engine_plaintexts.py
if [ "${CRYPTOFACE_SKIP_OPENFHE:-0}" != "1" ]; then
  run bash scripts/openfhe-venv.sh
  # openfhe-venv.sh has just checked that openfhe imports there, so these tests cannot all be skipped.
  # plus the product's multi-process flow (keygen, serve, enroll, verify, identify, restart) on OpenFHE.
  run .venv-openfhe/bin/python -m pytest -q -m "not slow" tests/test_backends_conformance.py tests/test_backends_params.py \
    tests/test_backends_wire.py tests/test_client_keys.py tests/test_cli_sequence.py tests/test_service_fuzz.py \
    tests/test_openfhe_screen.py tests/test_openfhe_keys.py tests/test_container.py tests/test_public_keys.py \
    tests/test_match_pairs.py tests/test_match_ring.py \
    tests/test_ui_browser.py::test_the_web_app_on_openfhe_at_test_size_with_stand_in_templates
fi
echo "== all test stages passed"
