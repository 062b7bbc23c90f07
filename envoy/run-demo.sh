#!/usr/bin/env bash
# Runs the lookergate demo in the foreground: Looker simulator, token broker, the dev IdP
# (`lookergate idp`, whose keys the filter fetches through OIDC discovery, and which also
# serves the embedding web app web/embed-demo at /app/) and Envoy with envoy/demo.yaml.
# Ctrl-C (or any of the four exiting) stops all four.
# Expects `make wasm envoy build web` to have run; `make demo` does that.
# Environment: LOOKERGATE_BIN_DIR (default target/release: where the native programs are;
# the browser test uses target/debug), LOOKERGATE_EMBED_TOKEN_TTL (seconds the simulated
# Looker's embed navigation/API tokens live; default: the simulator's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN_DIR=${LOOKERGATE_BIN_DIR:-target/release}
SIM=$BIN_DIR/lookergate-looker-sim
BROKER=$BIN_DIR/lookergate-broker
CLI=$BIN_DIR/lookergate
APP_DIR=web/embed-demo
ENVOY=.venv/bin/envoy
for f in "$SIM" "$BROKER" "$CLI" "$ENVOY" target/wasm32-wasip1/release/lookergate.wasm; do
  [[ -e $f ]] || { echo "run-demo: $f is missing; run 'make demo'" >&2; exit 1; }
done
[[ -e $APP_DIR/node_modules/@looker/embed-sdk/dist/main.js ]] \
  || echo "run-demo: the Embed SDK is not installed in $APP_DIR; run 'make web' (the embed demo page needs it)" >&2
sim_args=(--listen 127.0.0.1:10080)
[[ -n ${LOOKERGATE_EMBED_TOKEN_TTL:-} ]] && sim_args+=(--embed-token-ttl "$LOOKERGATE_EMBED_TOKEN_TTL")

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo stopped" >&2
}
trap stop INT TERM EXIT

"$SIM" "${sim_args[@]}" & pids+=($!)
"$BROKER" --listen 127.0.0.1:10090 & pids+=($!)
# The dev IdP signs with the committed demo key (kid demo-2026): `make token` tokens verify.
# It also serves the demo web app (static files) at http://127.0.0.1:10070/app/.
"$CLI" idp --listen 127.0.0.1:10070 --app-dir "$APP_DIR" & pids+=($!)
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

Embedded analytics demo: open http://127.0.0.1:10070/app/ and sign in as alice or bob.
  The dashboard comes from Looker's UI host https://127.0.0.1:10443 (Envoy, TLS with a
  self-signed DEMO certificate): the browser must accept it once: open
  https://127.0.0.1:10443/ and accept the certificate (Envoy answers 404 there; fine).

Try, in another shell from the repository root:
  TOKEN=$(make -s token USER=alice)      # alice (analysts), bob (viewers), carol, eve
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/4.0/dashboards/1
  curl -s -H "Authorization: Bearer $(make -s token USER=eve)" http://127.0.0.1:10000/api/4.0/dashboards/1   # 403
  curl -s http://127.0.0.1:10080/__sim/requests     # what Looker received
Ctrl-C stops all four.

MSG

# Exit (and stop the rest) as soon as any of the four exits.
wait -n
