#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after another, then prints a summary
# (`make fuzz`; see docs/FUZZING.md). Environment:
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_TARGETS   space-separated subset (default: all)
#   FUZZ_JOBS      libFuzzer -jobs/-workers per target (default 1; CPUs are shared)
# Exit status: 0 when no target crashed, 1 otherwise. Logs: fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
ALL="jwt_verify jwt_signed jwks_parse config_load path_and_operation query_body wire_records"
FUZZ_TARGETS=${FUZZ_TARGETS:-$ALL}
FUZZ_JOBS=${FUZZ_JOBS:-1}
# -O -a: optimized, with debug assertions and overflow checks (ASan is cargo-fuzz's default).
BUILD_FLAGS=(-O -a)

mkdir -p fuzz/logs
[ -f fuzz/fixtures/jwks.json ] && [ -d fuzz/seeds/jwt_verify ] || \
  cargo run --quiet --release --manifest-path fuzz/Cargo.toml --bin gen_seeds

cargo +nightly fuzz build "${BUILD_FLAGS[@]}"

summary=fuzz/logs/summary.md
{
  echo "| target | seconds | execs | execs/s | cov | ft | corpus | new units | peak RSS MB | result |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} > "$summary"
failed=0
for t in $FUZZ_TARGETS; do
  log=fuzz/logs/$t.log
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  extra=()
  # -jobs N makes libFuzzer write fuzz-<n>.log files of its own; one job is the default.
  [ "$FUZZ_JOBS" -gt 1 ] && extra+=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
  case $t in
    jwks_parse|config_load|query_body) extra+=(-dict=fuzz/dict/json.dict) ;;
  esac
  case $t in
    config_load) extra+=(-max_len=16384) ;;
    jwt_verify|jwt_signed) extra+=(-max_len=8192) ;;
  esac
  echo "== $t: ${FUZZ_SECONDS}s" >&2
  start=$(date +%s)
  set +e
  cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${extra[@]}" > "$log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  stat() { grep -a "^stat::$1:" "$log" | tail -1 | awk '{print $2}'; }
  last=$(grep -aE '^#[0-9]+.*cov: ' "$log" | tail -1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$last")
  if [ "$rc" -eq 0 ]; then
    result=ok
  else
    failed=1
    artifact=$(grep -aoE 'fuzz/artifacts/[^ ]+' "$log" | tail -1 || true)
    why=$(grep -aE "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$log" | head -1 | cut -c1-120 || true)
    result="CRASH ${artifact:-?} (${why:-exit $rc})"
  fi
  echo "| $t | $secs | $(stat number_of_executed_units) | $(stat average_exec_per_sec) | ${cov:-?} | ${ft:-?} | ${corp:-?} | $(stat new_units_added) | $(stat peak_rss_mb) | $result |" >> "$summary"
done

# Inputs that found bugs before: do they still fail? (native, stable toolchain)
if cargo test --quiet --release --manifest-path fuzz/Cargo.toml --test replay regressions > fuzz/logs/regressions.log 2>&1; then
  echo "regressions: all fixed (fuzz/regressions/)" >> "$summary"
else
  echo "regressions: still failing, see fuzz/logs/regressions.log" >> "$summary"
  grep -aE '^[a-z_]+: .*regressions/' fuzz/logs/regressions.log | sed 's/^/  /' >> "$summary" || true
fi

echo >&2
cat "$summary"
exit "$failed"
