#!/usr/bin/env bash
# Runs the lookergate demo in the foreground: Looker simulator, token broker and Envoy
# with envoy/demo.yaml. Ctrl-C (or any of the three exiting) stops all three.
# Expects `make wasm envoy build` to have run; `make demo` does that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIM=target/release/lookergate-looker-sim
BROKER=target/release/lookergate-broker
ENVOY=.venv/bin/envoy
for f in "$SIM" "$BROKER" "$ENVOY" target/wasm32-wasip1/release/lookergate.wasm; do
  [[ -e $f ]] || { echo "run-demo: $f is missing; run 'make demo'" >&2; exit 1; }
done

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo stopped" >&2
}
trap stop INT TERM EXIT

"$SIM" --listen 127.0.0.1:10080 & pids+=($!)
"$BROKER" --listen 127.0.0.1:10090 & pids+=($!)
# No hot restart in the demo: nothing left behind in /dev/shm.
"$ENVOY" -c envoy/demo.yaml --concurrency 2 --log-level info --disable-hot-restart & pids+=($!)

# Wait (bounded) for Envoy's admin to report ready before printing instructions.
for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null http://127.0.0.1:9901/ready 2>/dev/null; then break; fi
  kill -0 "${pids[2]}" 2>/dev/null || { echo "run-demo: Envoy exited" >&2; exit 1; }
  sleep 0.1
done

cat >&2 <<'MSG'

lookergate demo is up: Envoy 127.0.0.1:10000 (admin :9901), broker :10090, Looker simulator :10080
Try, in another shell from the repository root:
  TOKEN=$(make -s token USER=alice)      # alice (analysts), bob (viewers), carol, eve
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/4.0/dashboards/1
  curl -s -H "Authorization: Bearer $(make -s token USER=eve)" http://127.0.0.1:10000/api/4.0/dashboards/1   # 403
  curl -s http://127.0.0.1:10080/__sim/requests     # what Looker received
Ctrl-C stops all three.

MSG

# Exit (and stop the rest) as soon as any of the three exits.
wait -n
