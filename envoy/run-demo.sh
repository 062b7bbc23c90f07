#!/usr/bin/env bash
# Runs the lookergate demo in the foreground: Looker simulator, token broker, the dev IdP
# (`lookergate idp`, whose keys the filter fetches through OIDC discovery) and Envoy with
# envoy/demo.yaml. Ctrl-C (or any of the four exiting) stops all four.
# Expects `make wasm envoy build` to have run; `make demo` does that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIM=target/release/lookergate-looker-sim
BROKER=target/release/lookergate-broker
CLI=target/release/lookergate
ENVOY=.venv/bin/envoy
for f in "$SIM" "$BROKER" "$CLI" "$ENVOY" target/wasm32-wasip1/release/lookergate.wasm; do
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
# The dev IdP signs with the committed demo key (kid demo-2026): `make token` tokens verify.
"$CLI" idp --listen 127.0.0.1:10070 & pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null http://127.0.0.1:10070/healthz 2>/dev/null && break
  kill -0 "${pids[2]}" 2>/dev/null || { echo "run-demo: the IdP exited" >&2; exit 1; }
  sleep 0.1
done
# No hot restart in the demo: nothing left behind in /dev/shm.
"$ENVOY" -c envoy/demo.yaml --concurrency 2 --log-level info --disable-hot-restart & pids+=($!)

# Wait (bounded) for Envoy's admin to report ready, then for the filter to have fetched
# the IdP's keys (the IdP counts JWKS fetches), plus one filter tick (0.5 s) so every
# worker installed them: before that, requests get 503 keys_unavailable.
ready=
for _ in $(seq 1 300); do
  kill -0 "${pids[3]}" 2>/dev/null || { echo "run-demo: Envoy exited" >&2; exit 1; }
  if curl -fsS -o /dev/null http://127.0.0.1:9901/ready 2>/dev/null \
     && curl -fsS http://127.0.0.1:10070/__idp/stats 2>/dev/null | grep -q '"jwks_requests":[1-9]'; then
    ready=1; break
  fi
  sleep 0.1
done
if [[ -n $ready ]]; then sleep 1; else
  echo "run-demo: Envoy has not fetched the IdP's keys after 30 s; requests get 503 until it does" >&2
fi

cat >&2 <<'MSG'

lookergate demo is up: Envoy 127.0.0.1:10000 (admin :9901), broker :10090, Looker simulator :10080,
dev IdP :10070 (discovery, JWKS; POST /rotate to rotate its key, GET /__idp/stats)
Try, in another shell from the repository root:
  TOKEN=$(make -s token USER=alice)      # alice (analysts), bob (viewers), carol, eve
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/4.0/dashboards/1
  curl -s -H "Authorization: Bearer $(make -s token USER=eve)" http://127.0.0.1:10000/api/4.0/dashboards/1   # 403
  curl -s http://127.0.0.1:10080/__sim/requests     # what Looker received
Ctrl-C stops all four.

MSG

# Exit (and stop the rest) as soon as any of the four exits.
wait -n
