# Start and stop real local services on loopback for the demo and tests.
# Source this file; every function is idempotent and cleans up after itself
# through stop_services (call it from an EXIT trap).

SERVICES_DIR="${SERVICES_DIR:-$(mktemp -d /tmp/agentguard-services.XXXXXX)}"
chmod 755 "$SERVICES_DIR"
_service_pids=()

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

# start_postgres PORT: a throwaway PostgreSQL cluster on 127.0.0.1:PORT
# (trust auth, unix socket in its data folder).
start_postgres() {
  local port=$1 bin data
  bin=$(pg_bin)
  [[ -n "$bin" ]] || { echo "PostgreSQL is not installed: run scripts/setup.sh" >&2; return 1; }
  data="$SERVICES_DIR/pg-$port"
  install -d -o postgres -g postgres "$data"
  runuser -u postgres -- "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/log" -w \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1" start >/dev/null
}

stop_postgres() {
  local port=$1 bin
  bin=$(pg_bin)
  [[ -d "$SERVICES_DIR/pg-$port" ]] && runuser -u postgres -- "$bin/pg_ctl" -D "$SERVICES_DIR/pg-$port" -m fast stop >/dev/null 2>&1 || true
}

# start_mariadb PORT: a throwaway MariaDB on 127.0.0.1:PORT (root over its
# unix socket, user agent/agentpw over TCP).
start_mariadb() {
  local port=$1
  local data="$SERVICES_DIR/maria-$port"
  command -v mariadbd >/dev/null || { echo "MariaDB is not installed: run scripts/setup.sh" >&2; return 1; }
  mkdir -p "$data"
  mariadb-install-db --no-defaults --user=root --skip-test-db --datadir="$data/db" \
    --auth-root-authentication-method=normal >"$data/install.log" 2>&1
  mariadbd --no-defaults --user=root --datadir="$data/db" --socket="$data/sock" --port="$port" \
    --bind-address=127.0.0.1 --skip-log-bin --innodb-buffer-pool-size=16M \
    --pid-file="$data/pid" --log-error="$data/err.log" >/dev/null 2>&1 &
  _service_pids+=($!)
  for _ in $(seq 100); do
    mariadb --no-defaults -uroot --socket="$data/sock" -e "SELECT 1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "mariadb on $port did not start: $(tail -5 "$data/err.log")" >&2
  return 1
}

# maria_sql PORT SQL: SQL as root over the unix socket (outside any guard).
maria_sql() {
  mariadb --no-defaults -uroot --socket="$SERVICES_DIR/maria-$1/sock" -e "$2"
}

# start_http PORT DIR: python's http.server on 127.0.0.1:PORT serving DIR.
start_http() {
  local port=$1 dir=$2
  /usr/bin/python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dir" >"$SERVICES_DIR/http-$port.log" 2>&1 &
  local pid=$!
  _service_pids+=($pid)
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { echo "http server on $port failed: $(cat "$SERVICES_DIR/http-$port.log")" >&2; return 1; }
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "http server on $port did not start" >&2
  return 1
}

stop_services() {
  for pid in "${_service_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for d in "$SERVICES_DIR"/pg-*; do [[ -d "$d" ]] && stop_postgres "${d##*-}"; done
  rm -rf "$SERVICES_DIR"
}
