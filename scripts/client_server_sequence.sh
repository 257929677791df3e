#!/usr/bin/env bash
# The README's client/server sequence, each command a separate process, timed:
#   serve (background, admin key file) -> admin tenant-create -> admin api-key-create -> login
#   -> keygen -> enroll obama -> verify obama (genuine) -> verify obama (chirac)
#   -> identify -> restart the server -> verify obama again.
# Usage: scripts/client_server_sequence.sh [CRYPTOFACE_BIN] [WORKDIR] [KEYGEN_ARGS]
#   CRYPTOFACE_BIN defaults to .venv-openfhe/bin/cryptoface (OpenFHE, default 128-bit parameters).
# Prints one line per step with its wall time and the command's own last line; exits non-zero on any
# unexpected decision.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-.venv-openfhe/bin/cryptoface}
work=${2:-$(mktemp -d)}
read -r -a keygen_args <<<"${3:-}"  # e.g. "--backend simulator" for a quick rehearsal (not encryption)
samples=src/cryptoface/assets/samples
port=${CRYPTOFACE_PORT:-8765}
export CRYPTOFACE_HOME="$work/home"
server="http://127.0.0.1:$port"
pid=

step() {  # step NAME EXPECTED_EXIT CMD...
  local name=$1 want=$2 t0 rc=0 out
  shift 2
  t0=$(date +%s.%N)
  out=$("$@" 2>&1) || rc=$?
  printf '%-34s %7.1f s  exit %d  %s\n' "$name" "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{print a-b}')" "$rc" "$(tail -n 1 <<<"$out")"
  if [ "$rc" != "$want" ]; then
    echo "$out" >&2
    echo "error: $name exited $rc, expected $want" >&2
    exit 1
  fi
}

start_server() {
  "$bin" serve --db "$work/faces.db" --port "$port" --admin-key-file "$work/admin.key" >>"$work/server.log" 2>&1 &
  pid=$!
  local t0
  t0=$(date +%s.%N)
  until curl -sf "$server/v1/health" >/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.5
  done
  printf '%-34s %7.1f s\n' "serve (until /v1/health answers)" "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{print a-b}')"
}

stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT

echo "== $bin, work folder $work"
(umask 077 && head -c 32 /dev/urandom | base64 | tr -d '/+=' >"$work/admin.key")
start_server
tenant=$("$bin" admin tenant-create "sequence" --server "$server" --admin-key-file "$work/admin.key" | awk '{print $2}')
token=$("$bin" admin api-key-create "$tenant" --server "$server" --admin-key-file "$work/admin.key" | tail -n 1)
step "login" 0 "$bin" login --server "$server" --api-key "$token"
step "keygen" 0 "$bin" keygen "${keygen_args[@]}"
step "enroll obama obama3.jpg" 0 "$bin" enroll obama "$samples/obama3.jpg" --server "$server"
step "verify obama obama4.jpg" 0 "$bin" verify obama "$samples/obama4.jpg" --server "$server"
step "verify obama chirac1.jpg" 1 "$bin" verify obama "$samples/chirac1.jpg" --server "$server"
step "identify obama4.jpg" 0 "$bin" identify "$samples/obama4.jpg" --server "$server"
stop_server
start_server
step "verify obama obama4.jpg (restarted)" 0 "$bin" verify obama "$samples/obama4.jpg" --server "$server"
stop_server
pid=
echo "== sequence passed"
