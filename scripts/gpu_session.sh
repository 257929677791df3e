#!/usr/bin/env bash
# Everything one lent GPU session measures (issue 19), in one command that fits a 10-minute device call:
#   0. scripts/gpu_probe.py: correct encryptions, and single-operation times (~15 s),
#   1. the backend conformance suite on desilofhe's CUDA mode (~30 s),
#   2. `cryptoface bench` Net4, 3 timed runs after the run that encodes and keeps the weight plaintexts
#      (~75 s on an H200: keys 2 s, that first run 17 s, 10.4 s a run),
#   3. `cryptoface bench-match` 1:N over 10,000 encrypted templates (3 runs), the server in its own process,
#   4. `cryptoface bench` Net16 (RUNS16 runs, default 3; ~3.5x Net4's products),
#   5. Net4 with compact plaintexts only (a compact product measured faster than a full one on the H200),
#   6. Net4 once more without the plaintext cache (what the cache saves).
# Each step has its own time limit and the script goes on after a failed step, so one problem does not cost the
# session's other figures. Results: JSON and logs under $OUT (the device tool brings that folder back).
#
# On the device machine (no network: Python packages travel as wheels in .whl/, see scripts/gpu_wheels.sh):
#   bash scripts/gpu_session.sh
# Dry run of the plumbing on any machine (CPU, simulator, small gallery; the .whl wheels are for CPython 3.12,
# so with another Python skip them):
#   OUT=/tmp/gpu-dry BACKEND=simulator DEVICE=cpu GALLERY=1000 RUNS16=1 NO_WHEELS=1 PYTHON=.venv/bin/python \
#     bash scripts/gpu_session.sh
set -uo pipefail

OUT=${OUT:-/tmp/gpu-session}
BACKEND=${BACKEND:-desilofhe}
DEVICE=${DEVICE:-gpu}
GALLERY=${GALLERY:-10000}
RUNS16=${RUNS16:-3}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ "${NO_WHEELS:-0}" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "wheel install failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -f .whl/face_detection_yunet_2023mar.onnx ]; then
    export CRYPTOFACE_YUNET=$PWD/.whl/face_detection_yunet_2023mar.onnx
fi

summary="$OUT/summary.txt"
: >"$summary"
step() {  # step NAME LIMIT_S COMMAND...: run, log to $OUT/NAME.log, record exit status and seconds
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name: $*" | tee -a "$summary"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$summary"
    tail -n 4 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$summary"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
    nproc
    "$PYTHON" --version
    "$PYTHON" -c "import desilofhe; print('desilofhe', desilofhe.__file__)" 2>&1
} | tee "$OUT/machine.txt"

cf=("$PYTHON" -m cryptoface)
step probe 60 "$PYTHON" scripts/gpu_probe.py
step conformance 90 env CRYPTOFACE_TEST_DEVICE="$DEVICE" "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/test_backends_conformance.py -k "$BACKEND or gpu"
step net4 150 "${cf[@]}" bench --backend "$BACKEND" --device "$DEVICE" --keep-plaintexts --runs 3 \
    --json "$OUT/net4.json"
step match 120 "${cf[@]}" bench-match --backend "$BACKEND" --device "$DEVICE" --pairs 4 --gallery "$GALLERY" \
    --runs 3 --quiet --json "$OUT/match.json"
step net16 200 "${cf[@]}" bench --backend "$BACKEND" --device "$DEVICE" --resolution 128 --keep-plaintexts \
    --runs "$RUNS16" --json "$OUT/net16.json"
step net4-compact 60 "${cf[@]}" bench --backend "$BACKEND" --device "$DEVICE" --keep-plaintexts \
    --plaintext-budget-gb 0 --runs 1 --json "$OUT/net4-compact.json"
step net4-uncached 60 "${cf[@]}" bench --backend "$BACKEND" --device "$DEVICE" --no-keep-plaintexts --runs 1 \
    --json "$OUT/net4-uncached.json"
echo "done" | tee -a "$summary"
