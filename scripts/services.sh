# shellcheck shell=bash
# Local PostgreSQL 15 and Redis 7 for development, tests and load tests.
#
# Sourced by ./manage and loadtests/run. Each "profile" (dev, test, loadtest, ...) gets its own
# data folder and ports, so a running dev service never collides with the test suite.
# Nothing here is used when DATABASE_URL / REDIS_URL are given: then those servers are used as they are.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[manage] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_install() {
  log "installing OS packages: $*"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
    as_root apt-get update -qq
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

# The project's virtualenv, re-installed only when pyproject.toml changes.
ensure_venv() {
  local extras="${1:-dev}"
  local py="${PYTHON:-python3.11}"
  command -v "$py" >/dev/null || py=python3
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    log "creating .venv with $py"
    "$py" -m venv "$ROOT/.venv"
  fi
  local stamp="$ROOT/.venv/.installed-$extras"
  local want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing Python dependencies ($extras)"
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
    # (The filter hides pip's notes about this machine's unused local index folders.)
    "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -e "$ROOT[$extras]" 2>&1 \
      | { grep -v -e "^WARNING: Location 'file:" -e "^ *$" || true; }
    [ "${PIPESTATUS[0]}" -eq 0 ] || { log "pip install failed"; return 1; }
    echo "$want" >"$stamp"
  fi
  export PATH="$ROOT/.venv/bin:$PATH"
}

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/15/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  apt_install postgresql-15 >&2
  echo /usr/lib/postgresql/15/bin
}

# Data lives under .data/<profile>. When the project folder is not reachable by the unprivileged
# postgres user (root running from a private folder), a folder under /tmp is used instead.
data_dir() {
  local profile="$1"
  local dir="$ROOT/.data/$profile"
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir" 2>/dev/null || true
    if ! runuser -u postgres -- test -w "$dir" 2>/dev/null; then
      dir="/tmp/referral-$(echo "$ROOT" | sha256sum | cut -c1-8)/$profile"
      mkdir -p "$dir"
      chmod 755 "$(dirname "$dir")"
      chown postgres: "$dir"
    fi
  fi
  echo "$dir"
}

run_pg() {  # run a PostgreSQL binary as the unprivileged user when we are root
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local profile="$1" port="$2"
  local bindir dir
  bindir="$(pg_bindir)"
  dir="$(data_dir "$profile")/pg"
  if [ ! -f "$dir/PG_VERSION" ]; then
    log "initdb $dir"
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    run_pg "$bindir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$dir/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 512MB
synchronous_commit = on
fsync = on
CONF
  fi
  if ! run_pg "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    log "starting PostgreSQL 15 on 127.0.0.1:$port ($dir)"
    run_pg "$bindir/pg_ctl" -D "$dir" -o "-p $port" -l "$dir/server.log" -w -t 60 start >/dev/null
  fi
  local db=referral
  if ! run_pg "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "select 1 from pg_database where datname='$db'" postgres | grep -q 1; then
    run_pg "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
  fi
  export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/$db"
  export PG_DATA_DIR="$dir" PG_BIN_DIR="$bindir" PG_PORT="$port"
}

stop_postgres() {
  local profile="$1"
  local dir
  dir="$(data_dir "$profile")/pg"
  [ -f "$dir/PG_VERSION" ] || return 0
  run_pg "$(pg_bindir)/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

start_redis() {
  local profile="$1" port="$2"
  command -v redis-server >/dev/null || apt_install redis-server
  local dir
  dir="$(data_dir "$profile")/redis"
  mkdir -p "$dir"
  if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
    log "starting Redis on 127.0.0.1:$port ($dir, appendonly yes, appendfsync ${REDIS_APPENDFSYNC:-everysec})"
    # Durability: every acknowledged write is in the AOF; with "everysec" a machine crash can lose
    # up to one second of writes, with "always" none (see README, "Durability").
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
      --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
      --appendonly yes --appendfsync "${REDIS_APPENDFSYNC:-everysec}" \
      --save "" --maxmemory "${REDIS_MAXMEMORY:-1gb}" --maxmemory-policy noeviction
    local i
    for i in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  export REDIS_URL="redis://127.0.0.1:$port/0"
  export REDIS_DATA_DIR="$dir" REDIS_PORT="$port"
}

stop_redis() {
  local port="$1"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
}

# A local Redis Cluster: three primaries on ports base..base+2 (at most 55535: each node also
# listens on its port + 10000), no replicas, the same durability settings as start_redis. For the cluster tests, and to try REDIS_CLUSTER=1 on one machine.
start_redis_cluster() {
  local profile="$1" base="$2"
  command -v redis-server >/dev/null || apt_install redis-server
  local port dir nodes=() i
  for port in "$base" $((base + 1)) $((base + 2)); do
    nodes+=("127.0.0.1:$port")
    redis-cli -p "$port" ping >/dev/null 2>&1 && continue
    dir="$(data_dir "$profile")/redis-cluster/$port"
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
      --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --appendonly yes --appendfsync "${REDIS_APPENDFSYNC:-everysec}" \
      --save "" --maxmemory "${REDIS_MAXMEMORY:-1gb}" --maxmemory-policy noeviction
  done
  for port in "$base" $((base + 1)) $((base + 2)); do
    for i in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  # A new cluster only when these nodes have never formed one (their nodes.conf remembers it).
  if [ "$(redis-cli -p "$base" cluster info 2>/dev/null | tr -d '\r' | grep cluster_known_nodes)" = "cluster_known_nodes:1" ]; then
    log "creating a Redis Cluster of ${nodes[*]} ($(data_dir "$profile")/redis-cluster)"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
  fi
  for i in $(seq 1 100); do
    redis-cli -p "$base" cluster info 2>/dev/null | grep -q "cluster_state:ok" && break
    sleep 0.1
  done
  export REDIS_CLUSTER_URL="redis://127.0.0.1:$base"
}

stop_redis_cluster() {
  local base="$1" port
  for port in "$base" $((base + 1)) $((base + 2)); do stop_redis "$port"; done
}

# A stable secret per data folder, so hashed IPs stay comparable across restarts.
ensure_secret() {
  local profile="$1"
  if [ -z "${SECRET_KEY:-}" ]; then
    local f="$ROOT/.data/$profile.secret"
    mkdir -p "$ROOT/.data"
    [ -f "$f" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f")
    SECRET_KEY="$(cat "$f")"
    export SECRET_KEY
  fi
}
