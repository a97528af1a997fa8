#!/usr/bin/env bash
# A throwaway PostgreSQL server for the benchmark suite's eventsourcing/PostgreSQL baseline.
#
#   eval "$(benchmarks/setup_postgres.sh)"     # install if needed, start, export the DSN
#   .venv/bin/python -m benchmarks.run         # picks up AETHER_BENCH_POSTGRES_DSN
#   benchmarks/setup_postgres.sh stop          # stop the server and delete its data
#   benchmarks/setup_postgres.sh status        # running? prints the export line if so
#
# * If no PostgreSQL server binaries are found (PATH, /usr/lib/postgresql/*/bin,
#   /usr/pgsql-*/bin), installs them from the OS packages: `apt-get update` and
#   `apt-get install -y postgresql` (Debian/Ubuntu; needs root). On a fresh install the
#   package's own "main" cluster is not created (createcluster.conf), so nothing else
#   starts.
# * Creates a cluster in $AETHER_BENCH_PG_DIR (default: ${TMPDIR:-/tmp}/aether-bench-postgres)
#   with initdb, owned by the `postgres` user when run as root, and starts it with
#   pg_ctl, listening on 127.0.0.1 only (a free port, or $AETHER_BENCH_PG_PORT) and on a
#   unix socket inside the data dir. Authentication is `trust`: loopback only, throwaway
#   data, never use it for anything else.
# * Creates the database `aether_bench` and prints `export AETHER_BENCH_POSTGRES_DSN=...`
#   on stdout (everything else goes to stderr), so `eval "$(...)"` sets it.
# Running it again reuses a running cluster.
set -euo pipefail

DIR="${AETHER_BENCH_PG_DIR:-${TMPDIR:-/tmp}/aether-bench-postgres}"
DATA="$DIR/data"
PORT_FILE="$DIR/port"
DB=aether_bench
DB_USER=aether
LOG="$DIR/postgres.log"

say() { printf 'setup_postgres: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

find_bindir() {
    local candidate
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    # Debian/Ubuntu keep the server binaries off PATH; newest version first.
    for candidate in $(ls -d /usr/lib/postgresql/*/bin /usr/pgsql-*/bin 2>/dev/null | sort -rV); do
        if [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/initdb" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_postgres() {
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed; run this script as root to install it"
    command -v apt-get >/dev/null 2>&1 ||
        die "PostgreSQL is not installed and apt-get is not available; install it with your OS packages"
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        # We run our own throwaway cluster; do not let the package create and start one.
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    fi
    say "installing PostgreSQL from the OS packages (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2
}

# Run a command as the cluster's owner: `postgres` when we are root (PostgreSQL refuses
# to run as root), else ourselves.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

free_port() {
    if [ -n "${AETHER_BENCH_PG_PORT:-}" ]; then
        echo "$AETHER_BENCH_PG_PORT"
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        echo 54329
    fi
}

dsn() {
    echo "postgresql://$DB_USER@127.0.0.1:$(cat "$PORT_FILE")/$DB"
}

running() {
    local bindir=$1
    [ -f "$DATA/PG_VERSION" ] && [ -f "$PORT_FILE" ] && as_owner "$bindir/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
    local bindir port
    if ! bindir=$(find_bindir); then
        install_postgres
        bindir=$(find_bindir) || die "PostgreSQL was installed but pg_ctl/initdb were not found"
    fi
    say "using $("$bindir/pg_ctl" --version) from $bindir"
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        say "creating the system user 'postgres'"
        useradd --system --home-dir "$DIR" --shell /usr/sbin/nologin postgres
    fi
    if running "$bindir"; then
        say "already running in $DATA"
        echo "export AETHER_BENCH_POSTGRES_DSN=$(dsn)"
        return 0
    fi
    mkdir -p "$DIR"
    if [ ! -f "$DATA/PG_VERSION" ]; then
        rm -rf "$DATA"
        if [ "$(id -u)" -eq 0 ]; then chown postgres: "$DIR"; fi
        say "initdb $DATA"
        as_owner "$bindir/initdb" -D "$DATA" -U "$DB_USER" --auth=trust -E UTF8 --no-locale >&2
    fi
    port=$(free_port)
    echo "$port" >"$PORT_FILE"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$PORT_FILE"; fi
    say "starting on 127.0.0.1:$port (log: $LOG)"
    as_owner "$bindir/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$DIR'" \
        start >&2
    if ! as_owner "$bindir/psql" -h 127.0.0.1 -p "$port" -U "$DB_USER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
        as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB"
    fi
    say "ready; stop it with: $0 stop"
    echo "export AETHER_BENCH_POSTGRES_DSN=$(dsn)"
}

stop() {
    local bindir
    if bindir=$(find_bindir) && [ -f "$DATA/PG_VERSION" ]; then
        as_owner "$bindir/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
    fi
    rm -rf "$DIR"
    say "stopped; removed $DIR"
}

status() {
    local bindir
    if bindir=$(find_bindir) && running "$bindir"; then
        say "running in $DATA"
        echo "export AETHER_BENCH_POSTGRES_DSN=$(dsn)"
    else
        say "not running"
        return 1
    fi
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
    say "usage: $0 [start|stop|status]"
    exit 2
    ;;
esac
