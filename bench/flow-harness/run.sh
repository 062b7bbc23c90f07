#!/bin/sh
# Instructions per request of lookergate's own code (native build, fake host), warm and
# cold, counted by callgrind over the measured requests only. Needs valgrind and the
# token pools in bench/work/ (`make bench`, or `BENCH_GEN_ONLY=1 python3 bench/bench.py`).
# Unstripped release build in its own target dir, so the shipped artifacts are untouched.
set -eu
cd "$(dirname "$0")/../.."
N=${N:-2000}
CARGO_TARGET_DIR=target/harness CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1 \
    cargo build --quiet --release -p lookergate-flow-harness
for mode in warm cold; do
    out=target/harness/callgrind.$mode.out
    valgrind --tool=callgrind --toggle-collect='*measured*' --callgrind-out-file="$out" \
        target/harness/release/lookergate-flow-harness "$mode" "$N" >"$out.log" 2>&1
    collected=$(sed -n 's/.*Collected : //p' "$out.log")
    echo "$mode: $((collected / N)) instructions/request ($out; callgrind_annotate --inclusive=yes $out)"
done
