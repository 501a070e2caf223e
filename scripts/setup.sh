#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 machine: the eBPF toolchain
# (nightly rust-src, bpf-linker against the nightly toolchain's own libLLVM)
# and the Debian packages the tests and the demo use. Safe to run again:
# every step checks first and skips what is already there.
set -euo pipefail
# rustup's tools and bpf-linker live here; a non-login shell may not have it.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- Debian packages ---------------------------------------------------------
packages=(
  iproute2 util-linux procps psmisc curl python3 haproxy dnsmasq-base dnsutils
  # The escape suite sends ICMP with ping itself (ping sockets, raw sockets).
  iputils-ping
  postgresql postgresql-client pgbouncer nginx
  # The credential-injection test's Python driver (libpq-based, as agents use).
  python3-psycopg2
  # The Redis guard: a real server, redis-cli, redis-benchmark, redis-py.
  redis-server redis-tools python3-redis
  # The MySQL guard: a real MariaDB server, the mariadb CLI, PyMySQL.
  mariadb-server mariadb-client python3-pymysql openssl
  # `cargo xtask bench mysql`.
  sysbench
  # The service tests: systemd-analyze verify, groupadd, setpriv, and a real
  # OpenMetrics parser for the metrics endpoint.
  systemd passwd python3-prometheus-client
  # The HTTP guard's client test uses requests, as agents' tools do.
  python3-requests
  # The WebSocket test: a real server and client (python3-websockets).
  python3-websockets
  # `cargo xtask vm-test`: guests in qemu, an initramfs of busybox + our binaries.
  qemu-system-x86 busybox-static cpio
  # `cargo xtask load` and `bench http`: the HTTP load generator; `bench
  # http` also compares HTTPS interception with mitmproxy.
  wrk mitmproxy
)
# kubectl for the HTTP guard's Kubernetes test: Debian's kubernetes-client,
# unless some other kubectl is already installed (both own /usr/bin/kubectl).
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi
# Debian's postgresql package starts a cluster through systemd on install where
# systemd runs; tests start their own clusters, so nothing is needed here.

# --- nightly rust-src (for -Z build-std=core) --------------------------------
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
else
  log "nightly rust-src present"
fi

# --- bpf-linker, linked against nightly's libLLVM -----------------------------
# The linker keeps an rpath into $prefix, so the prefix lives beside cargo's
# home rather than in /tmp.
prefix="${AGENTGUARD_LLVM_PREFIX:-${CARGO_HOME:-$HOME/.cargo}/agentguard-rust-llvm}"
sysroot="$(rustc +nightly --print sysroot)"
llvm_so="$(ls "$sysroot"/lib/libLLVM.so.*-rust-*-nightly 2>/dev/null | head -n1 || true)"
if [[ -z "$llvm_so" ]]; then
  echo "setup: no libLLVM in $sysroot/lib; cannot build bpf-linker" >&2
  exit 1
fi
llvm_major="$(basename "$llvm_so" | sed -E 's/^libLLVM\.so\.([0-9]+)\..*/\1/')"
mkdir -p "$prefix/lib"
ln -sfn "$llvm_so" "$prefix/lib/libLLVM.so"
# The linker's rpath points here and the loader looks for the soname, not
# just libLLVM.so (outside `rustup run`, nothing else finds it).
ln -sfn "$llvm_so" "$prefix/lib/$(basename "$llvm_so")"
if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version >/dev/null 2>&1; then
  log "bpf-linker present ($(bpf-linker --version 2>&1 | head -n1))"
else
  log "building bpf-linker against LLVM $llvm_major (about a minute)"
  LLVM_PREFIX="$prefix" cargo install --locked bpf-linker --no-default-features --features "llvm-$llvm_major"
fi

# --- cargo-fuzz, for scripts/fuzz.sh (the decoders' fuzz targets) --------------
if command -v cargo-fuzz >/dev/null 2>&1; then
  log "cargo-fuzz present"
else
  log "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

# --- bpffs, where the daemon pins its programs --------------------------------
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  log "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
log "done"
