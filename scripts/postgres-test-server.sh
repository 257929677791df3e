#!/usr/bin/env bash
# A PostgreSQL server for the store tests (tests/test_store.py) on 127.0.0.1:5432, trust auth, database "test".
# If a server already answers there (this machine kind starts one before the session), nothing is done.
# Otherwise (Debian, as root): installs Debian's postgresql if no server binaries are present, then runs a
# cluster of its own (initdb --auth=trust in $CRYPTOFACE_PG_DATA, default /var/lib/postgresql/cryptoface-test)
# with pg_ctl as the postgres user, and creates the database "test". Idempotent; fails loudly (exit 1).
set -euo pipefail

HOST=127.0.0.1
PORT=${CRYPTOFACE_PG_PORT:-5432}  # another port only to try this script beside a running server
DATA=${CRYPTOFACE_PG_DATA:-/var/lib/postgresql/cryptoface-test}

die() { echo "postgres-test-server: $*" >&2; exit 1; }
server_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
answers() {
  local bin; bin=$(server_bin)
  if [ -n "$bin" ] && [ -x "$bin/pg_isready" ]; then "$bin/pg_isready" -q -h "$HOST" -p "$PORT"
  elif command -v pg_isready >/dev/null; then pg_isready -q -h "$HOST" -p "$PORT"
  else (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null  # no client tools yet: does anything listen?
  fi
}

if answers; then
  echo "== postgres: a server answers on $HOST:$PORT; using it"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "no server on $HOST:$PORT, and installing/starting one needs root"

installed_now=0
if [ -z "$(server_bin)" ]; then
  command -v apt-get >/dev/null || die "no PostgreSQL server here and no apt-get to install one (not Debian?); \
start one on $HOST:$PORT with trust auth, or point \$CRYPTOFACE_TEST_POSTGRES at one"
  echo "== postgres: installing Debian's postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || die "apt-get update failed"
  apt-get install -y -q postgresql || die "apt-get install postgresql failed"
  installed_now=1
fi
BIN=$(server_bin)
[ -n "$BIN" ] && [ -x "$BIN/initdb" ] && [ -x "$BIN/pg_ctl" ] || die "no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
id postgres >/dev/null 2>&1 || die "there is no 'postgres' user to run the server as"

# The package may just have started its own 'main' cluster on this port with password auth; that fresh, empty
# cluster is stopped so that ours (trust auth, for tests only) can take the port. Any other server is left alone.
if answers; then
  if [ "$installed_now" = 1 ] && command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header | awk -v p="$PORT" '$3 == p && $4 == "online" {print $1, $2}' |
      while read -r ver name; do echo "== postgres: stopping the package's new cluster $ver/$name"; pg_ctlcluster "$ver" "$name" stop; done
  fi
  answers && die "a server answers on $HOST:$PORT only after install, and it is not one this script started"
fi

as_postgres() { runuser -u postgres -- "$@"; }
install -d -o postgres -g postgres -m 0700 "$DATA"
install -d -o postgres -g postgres -m 2775 /var/run/postgresql
if [ ! -s "$DATA/PG_VERSION" ]; then
  echo "== postgres: initdb $DATA (trust auth, for tests only)"
  as_postgres "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null || die "initdb failed"
fi
echo "== postgres: starting $BIN/postgres on $HOST:$PORT"
as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
  -o "-c listen_addresses=$HOST -p $PORT -c unix_socket_directories=/var/run/postgresql" start ||
  { tail -n 20 "$DATA/server.log" >&2 || true; die "pg_ctl start failed (log above)"; }
answers || die "the server started but does not answer on $HOST:$PORT"

for db in test root; do
  if ! "$BIN/psql" -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" |
    grep -q 1; then
    "$BIN/createdb" -h "$HOST" -p "$PORT" -U postgres "$db" || die "createdb $db failed"
  fi
done
echo "== postgres: server on $HOST:$PORT (trust auth), databases test and root"
