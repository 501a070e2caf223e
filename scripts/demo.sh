#!/usr/bin/env bash
# The README's main job: agentguard guarding a sample agent against real
# local services (an HTTP service, PostgreSQL and MariaDB, plus one service
# the agent may not reach), showing each decision.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "scripts/demo.sh must run as root (it installs packages and loads eBPF programs): as root, bash scripts/demo.sh (or sudo bash scripts/demo.sh)" >&2; exit 1; }

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
bash scripts/setup.sh >/dev/null
cargo build --release -q -p agentguard
bin=target/release/agentguard

source scripts/services.sh
trap stop_services EXIT
HTTP_PORT=18080 PG_PORT=15432 ADMIN_PORT=18081 MYSQL_PORT=13306
mkdir -p "$SERVICES_DIR/www" && echo "internal docs" >"$SERVICES_DIR/www/index.html"
start_http $HTTP_PORT "$SERVICES_DIR/www"
start_http $ADMIN_PORT "$SERVICES_DIR/www"
start_postgres $PG_PORT
psql -X -q -h 127.0.0.1 -p $PG_PORT -U postgres -c "CREATE TABLE customers (id int, name text, email text, card text);
  INSERT INTO customers VALUES (1, 'Ann Lee', 'ann.lee@example.com', '4111 1111 1111 1111'),
                               (2, 'Bob Roe', 'bob@example.org', '5500 0000 0000 0004')"
start_mariadb $MYSQL_PORT
maria_sql $MYSQL_PORT "CREATE USER agent@'%' IDENTIFIED BY 'agentpw'; GRANT ALL ON *.* TO agent@'%';
  CREATE DATABASE shop; CREATE TABLE shop.orders (id int, customer_email text, total decimal(8,2));
  INSERT INTO shop.orders VALUES (1, 'ann.lee@example.com', 42.50), (2, 'bob@example.org', 9.99)"

config="$SERVICES_DIR/agentguard.toml"
sed -e "s|@RUN@|$SERVICES_DIR/run|" -e "s|@STATE@|$SERVICES_DIR/state|" -e "s|@POLICIES@|$PWD/policies|" \
  -e "s|@HTTP@|$HTTP_PORT|" -e "s|@PG@|$PG_PORT|" -e "s|@MYSQL@|$MYSQL_PORT|" examples/demo.toml >"$config"

# The daemon, as systemd would run it; its programs stay pinned under the
# demo's own bpffs_dir until the cleanup detaches them.
AGENTGUARD_LOG=info,agentguard::pipeline=debug "$bin" --config "$config" run 2>"$SERVICES_DIR/guard.log" &
daemon=$!
cleanup() {
  kill "${approver:-}" 2>/dev/null || true
  kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
  "$bin" --config "$config" detach --cgroup /agentguard/coder >/dev/null 2>&1 || true
  rm -rf /sys/fs/bpf/agentguard-demo
  stop_services
}
trap cleanup EXIT
for _ in $(seq 100); do [[ -S "$SERVICES_DIR/run/agentguard.sock" ]] && break; sleep 0.1; done

# A person on call: approves the first held statement, denies the next
# (what `agentguard approve ID` / `agentguard deny ID` do from a shell).
(
  answered=0
  while [[ $answered -lt 2 ]]; do
    id=$("$bin" --config "$config" approvals --json 2>/dev/null |
      /usr/bin/python3 -c 'import json,sys; p=json.load(sys.stdin)["pending"]; print(p[0]["id"] if p else "")')
    if [[ -n "$id" ]]; then
      echo "== on call: agentguard approvals" >&2
      "$bin" --config "$config" approvals >&2
      if [[ $answered -eq 0 ]]; then
        "$bin" --config "$config" approve "$id" --reason "ticket DEMO-1" >&2
      else
        "$bin" --config "$config" deny "$id" --reason "card changes go through billing" >&2
      fi
      answered=$((answered + 1))
    fi
    sleep 0.3
  done
) 2>"$SERVICES_DIR/oncall.log" &
approver=$!

echo "== the agent's view"
"$bin" --config "$config" exec --agent coder -- \
  /usr/bin/python3 examples/agent.py $HTTP_PORT $PG_PORT $ADMIN_PORT $MYSQL_PORT
echo
echo "== the person on call"
sed 's/^/  /' "$SERVICES_DIR/oncall.log"
echo
echo "== agentguard's decisions"
grep -E ' (allowed|denied|refused|held for approval)' "$SERVICES_DIR/guard.log" |
  sed -E 's/^[^ ]+ +//; s/agentguard::[a-z:]+: //' || true
echo
echo "== the audit log (agentguard audit)"
"$bin" --config "$config" audit --limit 30
echo
echo "== metrics (agentguard metrics)"
"$bin" --config "$config" metrics | grep -E '^agentguard_(decisions_total|approvals_answered_total|connections_total)' || true
grep -q ' denied ' "$SERVICES_DIR/guard.log" && grep -q ' allowed ' "$SERVICES_DIR/guard.log"
