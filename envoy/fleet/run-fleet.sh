#!/usr/bin/env bash
# Runs a lookergate fleet on loopback in the foreground (`make fleet`; docs/fleet.md):
# Redis, the rate limit service, the Looker simulator, the dev IdP, two token brokers and
# two Envoys with the filter (envoy/fleet/envoy-fleet.yaml, and the same with Envoy #2's ports). Ctrl-C (or
# any of them exiting) stops all of them.
# Expects `make wasm envoy build` to have run and redis-server to be installed; `make
# fleet` does both. Environment: LOOKERGATE_BIN_DIR (default target/release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

BIN_DIR=${LOOKERGATE_BIN_DIR:-target/release}
SIM=$BIN_DIR/lookergate-looker-sim
BROKER=$BIN_DIR/lookergate-broker
CLI=$BIN_DIR/lookergate
RLS=$BIN_DIR/lookergate-ratelimit
ENVOY=.venv/bin/envoy
REDIS=$(command -v redis-server || true)
for f in "$SIM" "$BROKER" "$CLI" "$RLS" "$ENVOY" "$REDIS" target/wasm32-wasip1/release/lookergate.wasm; do
  [[ -n $f && -e $f ]] || { echo "run-fleet: ${f:-redis-server} is missing; run 'make fleet'" >&2; exit 1; }
done
for port in 10100 10101 9911 9912 10170 10179 10180 10181 10190 10191; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run-fleet: 127.0.0.1:$port is in use (another fleet?)" >&2; exit 1
  fi
done

work=$(mktemp -d /tmp/lookergate-fleet.XXXXXX)
pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  echo "fleet stopped" >&2
}
trap stop INT TERM EXIT

# Redis: nothing on disk (the fleet's state lives as long as the fleet).
"$REDIS" --bind 127.0.0.1 --port 10179 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" & pids+=($!)
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/10179) 2>/dev/null && break; sleep 0.1; done
"$SIM" --listen 127.0.0.1:10180 & pids+=($!)
# The rate limit service: global budgets, counters in Redis db 1 (the brokers use db 0).
"$RLS" --listen 127.0.0.1:10181 --redis redis://127.0.0.1:10179/1 > /dev/null & pids+=($!)
# The dev IdP signs with the committed demo key (kid demo-2026), as `make demo`'s does:
# `make token` tokens verify here too.
"$CLI" idp --listen 127.0.0.1:10170 & pids+=($!)
# Two replicas of the broker's embedded demo config, pointed at the fleet's simulator and
# sharing Redis ([store]: broker/README.md "Shared store (replicas)") with one sealing key.
head -c 32 /dev/urandom | base64 > "$work/store-key"
chmod 600 "$work/store-key"
{
  "$BROKER" print-demo-config | sed 's#^looker_url = .*#looker_url = "http://127.0.0.1:10180"#'
  printf '\n[store]\nurl = "redis://127.0.0.1:10179/0"\nkey_file = "%s"\n' "$work/store-key"
} > "$work/broker.toml"
for port in 10190 10191; do
  "$BROKER" --listen "127.0.0.1:$port" --config "$work/broker.toml" & pids+=($!)
done
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null http://127.0.0.1:10170/healthz 2>/dev/null && break
  sleep 0.1
done
sed -e 's/port_value: 10100 }/port_value: 10101 }/' -e 's/port_value: 9911 }/port_value: 9912 }/' \
  envoy/fleet/envoy-fleet.yaml > "$work/envoy-2.yaml"
# Distinct base ids: two Envoys on one machine must not share hot-restart memory.
"$ENVOY" -c envoy/fleet/envoy-fleet.yaml --concurrency 2 --log-level warn --base-id 911 \
  --disable-hot-restart & pids+=($!)
"$ENVOY" -c "$work/envoy-2.yaml" --concurrency 2 --log-level warn --base-id 912 \
  --disable-hot-restart & pids+=($!)

# Bounded wait for both Envoys to be ready and to have fetched the IdP's keys, plus one
# filter tick so that every worker installed them (before that: 503 keys_unavailable).
ready=
for _ in $(seq 1 300); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run-fleet: a process exited (pid $pid)" >&2; exit 1; }
  done
  if curl -fsS -o /dev/null http://127.0.0.1:9911/ready 2>/dev/null \
     && curl -fsS -o /dev/null http://127.0.0.1:9912/ready 2>/dev/null \
     && curl -fsS http://127.0.0.1:10170/__idp/stats 2>/dev/null | grep -Eq '"jwks_requests":([2-9]|[1-9][0-9])'; then
    ready=1; break
  fi
  sleep 0.1
done
if [[ -n $ready ]]; then sleep 1; else
  echo "run-fleet: the Envoys have not fetched the IdP's keys after 30 s; requests get 503 until they do" >&2
fi

cat >&2 <<'MSG'

lookergate fleet is up, all on 127.0.0.1:
  Envoy #1 :10100 (admin :9911)   Envoy #2 :10101 (admin :9912)
  brokers :10190 and :10191       rate limit service :10181  Redis :10179
  Looker simulator :10180         dev IdP :10170

Try, in another shell from the repository root:
  TOKEN=$(make -s token USER=alice)      # the demo's users and keys: alice, bob, carol, eve
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10100/api/4.0/dashboards/1
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:10101/api/4.0/dashboards/1
  curl -s http://127.0.0.1:9911/clusters | grep lookergate_broker   # replicas, health
  kill <pid of one broker>     # the callouts go to the other one (docs/fleet.md)
  curl -s http://127.0.0.1:10180/__sim/logins      # what Looker saw of the brokers
  for p in 10100 10101 10100 10101; do for i in 1 2 3; do   # 10 queries a minute, both Envoys together
    curl -s -o /dev/null -w '%{http_code} ' -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
      -d '{"model":"thelook","view":"orders","fields":["orders.count"],"filters":{"orders.created_date":"2026-01%"},"limit":"10"}' http://127.0.0.1:$p/api/4.0/queries/run/json
  done; done; echo                                 # 200 x10, then 429
Ctrl-C stops everything.

MSG

# Exit (and stop the rest) as soon as any of them exits.
wait -n
