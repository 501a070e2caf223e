#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [TARGET...]
# Runs every cargo-fuzz target in fuzz/ (or those named) for SECONDS each
# (default 60), from the committed corpus (fuzz/corpus/TARGET). New inputs
# go to a scratch corpus under the fuzz target dir, so a run leaves the tree
# clean; with FUZZ_MERGE=1 those that reach new code (edges, not hit counts:
# the committed corpus stays small) are added to the committed corpus.
# A crash stops the run (exit 1) and leaves the input in fuzz/artifacts/.
# Prints libFuzzer's final stats per target (executions, speed).
#
# Target `props` (part of "every target" unless AGENTGUARD_FUZZ_PROPS=0, which
# CI sets) is the mask engine's property tests with fresh random seeds for
# SECONDS: cargo test runs them with one fixed seed, so CI stays the same on a
# tree no one changed, and this is where new cases are looked for. Each batch
# prints its seed; a failure is saved to
# agentguard-mask/tests/props.proptest-regressions — commit it, and CI replays
# it from then on. PROPTEST_CASES sets the batch size (default 2000),
# PROPTEST_RNG_SEED replays one seed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
secs="${1:-60}"
shift || true
export CARGO_TARGET_DIR="${AGENTGUARD_FUZZ_TARGET_DIR:-$PWD/target}"

props() {
  local end=$((SECONDS + secs)) cases="${PROPTEST_CASES:-2000}" seed log
  log="$CARGO_TARGET_DIR/fuzz-props.log"
  mkdir -p "$CARGO_TARGET_DIR"
  local test=(env -u CARGO_TARGET_DIR cargo test -p agentguard-mask --release --test props)
  echo "== fuzz props (${secs}s, ${cases} cases per seed)"
  (cd .. && "${test[@]}" --no-run -q)
  while :; do
    seed="${PROPTEST_RNG_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
    echo "  props: PROPTEST_RNG_SEED=$seed PROPTEST_CASES=$cases"
    if ! (cd .. && PROPTEST_RNG_SEED="$seed" PROPTEST_CASES="$cases" "${test[@]}" -q) >"$log" 2>&1; then
      grep -a -E 'panicked at|minimal failing input|Test failed' "$log" | head -n 12 || true
      tail -n 25 "$log"
      echo "fuzz: props failed with PROPTEST_RNG_SEED=$seed PROPTEST_CASES=$cases; the case is saved in agentguard-mask/tests/props.proptest-regressions" >&2
      exit 1
    fi
    [[ -z "${PROPTEST_RNG_SEED:-}" && $SECONDS -lt $end ]] || break
  done
}

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list)
  [[ "${AGENTGUARD_FUZZ_PROPS:-1}" == 0 ]] || targets+=(props)
fi
for t in "${targets[@]}"; do
  [[ $t == props ]] || { cargo +nightly fuzz build -O; break; }
done
for t in "${targets[@]}"; do
  if [[ $t == props ]]; then
    props
    continue
  fi
  seeds="corpus/$t"
  work="$CARGO_TARGET_DIR/fuzz-corpus/$t"
  mkdir -p "$seeds" "$work"
  echo "== fuzz $t (${secs}s)"
  log="$CARGO_TARGET_DIR/fuzz-$t.log"
  # -rss_limit_mb: a decoder that balloons on hostile input is a finding too.
  if ! cargo +nightly fuzz run -O "$t" "$work" "$seeds" -- \
      -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 \
      -timeout=10 >"$log" 2>&1; then
    grep -a -A3 'panicked at' "$log" | head -n 12 || true
    tail -n 25 "$log"
    echo "fuzz: $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)|^#[0-9]+[[:space:]]+DONE' "$log" | sed "s/^/  $t: /"
  if [[ "${FUZZ_MERGE:-0}" == 1 ]]; then
    cargo +nightly fuzz run -O "$t" "$seeds" "$work" -- -set_cover_merge=1 \
      -use_counters=0 -use_cmp=0 -use_value_profile=0 >/dev/null 2>&1
  fi
done
