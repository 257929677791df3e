#!/usr/bin/env bash
# Run CryptoFace through the HE benchmark harness: benchmark/run.py does the work (standard library only) and
# starts the harness with the backend's venv. Usage: bash benchmark/run.sh SIZE [--backend simulator] [...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$here/../.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
exec "$py" "$here/run.py" "$@"
