#!/usr/bin/env bash
# Runs the Looker SDK test (tests/sdk/test_looker_sdk.py) against the demo stack —
# simulator, broker, dev IdP (`lookergate idp`) and Envoy with envoy/demo.yaml — started
# here from the debug binaries `make test` builds, on free ports, and stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

BIN=${LOOKERGATE_BIN_DIR:-target/debug}
work=$(mktemp -d)
pids=()
stop() {
  # Services started by `start` run in a $(...) subshell: their pids are in files.
  for pid in "${pids[@]}" $(cat "$work"/*.pid 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT

# Starts a service on port 0 and prints the address from its `listening on` line.
# (Called as $(start ...), a subshell: the pid goes to a file for `stop`.)
start() {
  local log=$1; shift
  "$@" > "$log.out" 2> "$log.err" &
  echo $! > "$log.pid"
  for _ in $(seq 1 100); do
    if grep -q '^listening on ' "$log.out" 2>/dev/null; then
      sed -n 's/^listening on //p' "$log.out" | head -1
      return
    fi
    sleep 0.1
  done
  echo "sdk test: $* did not start; its log:" >&2; cat "$log.err" >&2; exit 1
}
free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

sim=$(start "$work/sim" "$BIN/lookergate-looker-sim" --listen 127.0.0.1:0)
broker=$(LOOKERGATE_BROKER_LOOKER_URL="http://$sim" start "$work/broker" "$BIN/lookergate-broker" --listen 127.0.0.1:0)
# The filter fetches the demo issuer's keys from the dev IdP (discovery, then JWKS).
idp=$(start "$work/idp" "$BIN/lookergate" idp --listen 127.0.0.1:0)
listen=$(free_port); admin=$(free_port); ui=$(free_port)
sed -e "s/port_value: 10000/port_value: $listen/" -e "s/port_value: 9901/port_value: $admin/" \
    -e "s/port_value: 10443/port_value: $ui/" \
    -e "s/port_value: 10080/port_value: ${sim##*:}/" -e "s/port_value: 10090/port_value: ${broker##*:}/" \
    -e "s/port_value: 10070/port_value: ${idp##*:}/" \
    envoy/demo.yaml > "$work/demo.yaml"
# The demo, plus a test-only issuer and one rule after the demo's: its tokens may call one
# operation of every tag of Looker's spec (tests/sdk/tag_samples.py).
.venv/bin/python tests/sdk/tag_samples.py envoy "$work/demo.yaml" > "$work/envoy.yaml"
.venv/bin/envoy -c "$work/envoy.yaml" --concurrency 1 --base-id $((RANDOM + 2000)) --disable-hot-restart \
  --file-flush-interval-msec 100 > "$work/access.log" 2> "$work/envoy.log" & pids+=($!)
for _ in $(seq 1 200); do
  curl -fsS -o /dev/null "http://127.0.0.1:$admin/ready" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$admin/ready" || { echo "sdk test: Envoy not ready" >&2; tail -20 "$work/envoy.log" >&2; exit 1; }
# Until the filter has the IdP's keys, requests get 503 keys_unavailable: wait for the
# fetch (the IdP counts it), then one filter tick (0.5 s, one worker here).
for _ in $(seq 1 200); do
  curl -fsS "http://$idp/__idp/stats" 2>/dev/null | grep -q '"jwks_requests":[1-9]' && break
  sleep 0.1
done
curl -fsS "http://$idp/__idp/stats" | grep -q '"jwks_requests":[1-9]' || { echo "sdk test: Envoy never fetched the IdP's keys" >&2; tail -20 "$work/envoy.log" >&2; exit 1; }
sleep 1

# The sampler: eve (no group: no demo rule grants her anything) from the test-only issuer.
sampler_token() { "$BIN/lookergate" token --user eve --iss "$(.venv/bin/python -c 'import sys; sys.path.insert(0, "tests/sdk"); import tag_samples; print(tag_samples.SAMPLER_ISSUER)')"; }

LOOKERGATE_URL="http://127.0.0.1:$listen" \
LOOKERGATE_TOKEN=$("$BIN/lookergate" token --user alice) \
LOOKERGATE_DENIED_TOKEN=$("$BIN/lookergate" token --user eve) \
LOOKERGATE_SAMPLER_TOKEN=$(sampler_token) \
LOOKERGATE_SIM_URL="http://$sim" \
LOOKERGATE_ACCESS_LOG="$work/access.log" \
  .venv/bin/python -m unittest -v tests/sdk/test_looker_sdk.py

.venv/bin/python tests/sdk/tag_samples.py samples > "$work/tag_samples.json"
# Looker's TypeScript SDK (tests/sdk/ts: `npm ci` there first; `make sdk-test` does).
LOOKERGATE_URL="http://127.0.0.1:$listen" \
LOOKERGATE_TOKEN=$("$BIN/lookergate" token --user alice) \
LOOKERGATE_SAMPLER_TOKEN=$(sampler_token) \
LOOKERGATE_TAG_SAMPLES="$work/tag_samples.json" \
LOOKERGATE_SIM_URL="http://$sim" \
  node --test tests/sdk/ts/test_looker_sdk.js
