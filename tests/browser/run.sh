#!/usr/bin/env bash
# The browser test (`make browser-test`): starts the demo stack (envoy/run-demo.sh, debug
# binaries, short embed token TTL so tokens expire during the test) on the demo's fixed
# ports, runs tests/browser/embed-demo.test.mjs in headless Chromium, and stops the stack
# whatever happens. Exit code: the test's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

export LOOKERGATE_BIN_DIR=${LOOKERGATE_BIN_DIR:-target/debug}
export LOOKERGATE_EMBED_TOKEN_TTL=${LOOKERGATE_EMBED_TOKEN_TTL:-15}

for port in 10000 10070 10080 10090 10443 9901; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "browser-test: port $port is in use (a demo running?); stop it first" >&2
    exit 1
  fi
done

log=$(mktemp -t lookergate-browser-demo.XXXXXX.log)
# Its own process group, so that stopping it reaches everything it started.
setsid envoy/run-demo.sh >"$log" 2>&1 &
demo=$!
stop() {
  # run-demo.sh stops its four services on TERM; the group kill is the fallback.
  kill -TERM "$demo" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$demo" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
}
trap stop EXIT

for _ in $(seq 1 600); do
  grep -q "lookergate demo is up" "$log" && break
  if ! kill -0 "$demo" 2>/dev/null; then
    echo "browser-test: the demo stack exited; its output:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
grep -q "lookergate demo is up" "$log" || { echo "browser-test: the demo is not up after 60 s:" >&2; cat "$log" >&2; exit 1; }

status=0
node tests/browser/embed-demo.test.mjs || status=$?
if [[ $status -ne 0 ]]; then
  echo "browser-test: FAILED ($status); the demo stack's output (last 80 lines):" >&2
  tail -n 80 "$log" >&2
fi
rm -f "$log"
exit "$status"
