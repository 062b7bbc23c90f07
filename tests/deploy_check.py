#!/usr/bin/env python3
"""Checks lookergate's deployment artifacts (`make deploy-check`, from the repository
root, after `make wasm envoy`).

- Every shipped Envoy config (envoy/demo.yaml, envoy/compose.yaml,
  envoy/production.yaml, any under bench/) passes `envoy --mode validate`. Validation
  starts the filter's VM and runs its configuration, so a plugin JSON the filter refuses
  fails here too (a control case proves it). Wasm paths that exist only in a container
  (/etc/lookergate/lookergate.wasm) are pointed at the local build first.
- The plugin JSON in every config and manifest parses, has the demo's keys (rules may be
  fewer: their keys must be ones the demo's rules use), and the filter accepts it (it is
  put into demo.yaml and validated by Envoy).
- envoy/compose.yaml is exactly envoy/demo.yaml with the compose addresses
  (`--write-compose` regenerates it); docker-compose.yaml and the Dockerfiles are
  checked against the repository (build contexts, COPY sources, every workspace member
  of Cargo.toml copied, packages, binaries; envoy/Dockerfile builds the filter into the
  pinned Envoy image, so compose mounts no build output). Cargo.toml's rust-version is
  the highest of the locked dependencies (read from the cargo registry sources).
- Every shipped Envoy config carries envoy/stats-tags.yaml's `stats_config` (the tag
  extractors that turn the filter's stat names into Prometheus labels), copied in by
  tools/stats_tags.py (no drift); so do the Istio bootstrap override and the Envoy
  Gateway EnvoyProxy that tool prints.
- Kubernetes manifests (envoy/istio, envoy/envoy-gateway, envoy/kubernetes) parse, have
  the expected apiVersion/kind, and use only field names of those APIs; cross references
  (plugin broker cluster, hosts, targetRefs) line up. The broker's Deployment is
  hardened (non-root, read-only root, no capabilities, seccomp), probed (/healthz,
  /readyz), takes its config from the ConfigMap and its secrets from the Secret (files,
  env), keeps rotated keys on a writable volume; its Service, PodDisruptionBudget and
  NetworkPolicy (only the gateway pods in) match it.
- Every manifest document is valid against its API's real schema (types, enums,
  required fields, no unknown field): Istio 1.29.2, Gateway API v1.5.1, Envoy Gateway
  v1.7.3 and Kubernetes 1.36.0, the validators of the npm packages pinned in
  tests/schema/ (installed into tests/.schema-cache with `npm ci`, once; needs Node.js
  and npm), run by tests/validate_manifests.mjs. Planted errors (a wrong enum such as
  EnvoyFilter `applyTo: HTTP_FILTR`, wrong types, a missing required field, unknown
  fields) must fail. tests/schema/README.md: sources, versions, our minimum versions.
- The long-query routes of production.yaml, the Istio VirtualService and the
  HTTPRoute are tools/long_routes.py's list (no drift), and replaying every Looker 4.0
  operation against each platform's routes (its own matching order) gives every
  operation the same timeout on all three: 300s for query runs, 30s for the rest.
- Every shipped HTTP connection manager (and anything in a manifest that sets one) has
  `use_remote_address: true`, no `internal_address_config` and no trusted
  X-Forwarded-For hop unless the config documents a load balancer in front; Envoy
  Gateway's ClientTrafficPolicy keeps that so (no customHeader, 0 hops).
- Istio: the EnvoyFilter and the Gateway select the pods of the Helm gateway install in
  docs/deploy.md; Looker is exported only to that namespace, whose AuthorizationPolicy
  refuses requests without the filter's Looker token. Envoy Gateway: the HTTPRoute
  attaches by sectionName to the shipped Gateway's HTTPS listener (TLS from a Secret),
  and the EnvoyPatchPolicy that gives the filter body access names the xDS listener
  (<ns>/<gateway>/<listener>) and the Wasm filter Envoy Gateway generates for it. Both
  patches run in Envoy with the real broker, simulator and IdP (tests/mesh_patch_check.py:
  a guarded query gets 200 patched, 408 unpatched, 403 through a gateway without the
  filter); that check needs the native binaries too (`make test-bins`).

Needs PyYAML, Node.js and npm. Prints one line per check and `N passed, M failed`; exits 1 on failure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import tomllib
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVOY = Path(os.environ.get("LOOKERGATE_ENVOY", ROOT / ".venv/bin/envoy"))
WASM_DIR = ROOT / "target/wasm32-wasip1/release"
DEMO = ROOT / "envoy/demo.yaml"
COMPOSE_ENVOY = ROOT / "envoy/compose.yaml"
PRODUCTION = ROOT / "envoy/production.yaml"
FLEET_DIR = ROOT / "envoy/fleet"
FLEET = FLEET_DIR / "envoy-fleet.yaml"
DOCKER_COMPOSE = ROOT / "envoy/docker-compose.yaml"
ISTIO_DIR = ROOT / "envoy/istio"
EG_DIR = ROOT / "envoy/envoy-gateway"
K8S_DIR = ROOT / "envoy/kubernetes"
OPERATIONS = ROOT / "proto/operations.tsv"

WASM_FILTER = "envoy.filters.http.wasm"
CONTAINER_WASM = "/etc/lookergate/lookergate.wasm"
# envoy/compose.yaml = demo.yaml with these upstream addresses (docker-compose services).
COMPOSE_UPSTREAMS = {"looker": "looker-sim", "lookergate_broker": "broker", "lookergate_idp": "idp"}

CHECKS: list[tuple[str, object]] = []


class CheckFailed(Exception):
    pass


def check(name):
    def register(fn):
        CHECKS.append((name, fn))
        return fn

    return register


def require(condition, message):
    if not condition:
        raise CheckFailed(message)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def load_yaml_documents(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---- Envoy configs -----------------------------------------------------------------


def envoy_configs() -> list[Path]:
    found = [DEMO, COMPOSE_ENVOY, PRODUCTION]
    for path in sorted((ROOT / "envoy").glob("*.yaml")) + sorted((ROOT / "envoy/fleet").glob("*.yaml")) + sorted((ROOT / "bench").rglob("*.y*ml")):
        if path in found or any(p in ("out", "work", "target") for p in path.relative_to(ROOT).parts):
            continue
        text = path.read_text()
        if "static_resources:" in text:
            found.append(path)
    return found


def wasm_filters(node):
    """Yields the `config` of every envoy.filters.http.wasm filter in an Envoy config."""
    if isinstance(node, dict):
        if node.get("name") == WASM_FILTER and isinstance(node.get("typed_config"), dict):
            yield node["typed_config"].get("config", {})
        for value in node.values():
            yield from wasm_filters(value)
    elif isinstance(node, list):
        for value in node:
            yield from wasm_filters(value)


def plugin_json_of_envoy_config(config: dict) -> list[str]:
    out = []
    for wasm in wasm_filters(config):
        value = wasm.get("configuration", {}).get("value")
        require(isinstance(value, str), "wasm filter without a StringValue configuration")
        out.append(value)
    return out


def localize_wasm_paths(text: str) -> str:
    """Points `filename: X.wasm` that does not exist here at the local build of X.wasm."""

    def replace(m):
        path = m.group(2)
        if (ROOT / path).exists():
            return m.group(0)
        local = WASM_DIR / Path(path).name
        require(local.exists(), f"{path}: no local build {rel(local)} (run `make wasm`)")
        return f"{m.group(1)}{local}"

    return re.sub(r"(filename:\s*)(\S+\.wasm)\b", replace, text)


# The shipped configs read the broker credential from Envoy's environment
# (broker.credential_env): validation runs Envoy with a stand-in under that name.
CREDENTIAL_ENV = "LOOKERGATE_BROKER_CREDENTIAL"
STAND_IN_CREDENTIAL = {CREDENTIAL_ENV: "deploy-check-stand-in-gateway-credential"}


def envoy_validate(text: str, label: str, env: dict | None = None) -> tuple[bool, str]:
    """`envoy --mode validate`, with `env` (default: the stand-in credential) added to
    Envoy's environment."""
    require(ENVOY.exists(), f"{rel(ENVOY)} is missing (run `make envoy`)")
    env = STAND_IN_CREDENTIAL if env is None else env
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "envoy.yaml"
        path.write_text(localize_wasm_paths(text))
        proc = subprocess.run(
            [str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**{k: v for k, v in os.environ.items() if k != CREDENTIAL_ENV}, **env},
        )
    output = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, f"{label}: envoy exit {proc.returncode}\n{output[-3000:]}"


def validate_config_file(path: Path):
    ok, log = envoy_validate(path.read_text(), rel(path))
    require(ok, log)


for _path in envoy_configs():
    check(f"envoy --mode validate {rel(_path)}")(lambda p=_path: validate_config_file(p))


def demo_with_plugin(plugin_json: str) -> str:
    """demo.yaml with its plugin JSON replaced, written out again as YAML (comments dropped)."""
    config = yaml.safe_load(DEMO.read_text())
    filters = list(wasm_filters(config))
    require(len(filters) == 1, f"envoy/demo.yaml: expected one lookergate filter, found {len(filters)}")
    configuration = filters[0].get("configuration")
    require(isinstance(configuration, dict), "envoy/demo.yaml: the Wasm filter has no configuration")
    configuration["value"] = plugin_json
    # A plugin that reads its broker credential from the VM's environment gets the
    # variable passed in, as its manifest does (checked below).
    name = json.loads(plugin_json).get("broker", {}).get("credential_env")
    if name:
        filters[0]["vm_config"]["environment_variables"] = {"host_env_keys": [name]}
    return yaml.safe_dump(config, sort_keys=False)


@check("envoy --mode validate refuses a plugin config the filter refuses (control)")
def validate_refuses_bad_plugin():
    demo_plugin = plugin_json_of_envoy_config(yaml.safe_load(DEMO.read_text()))[0]
    bad = json.loads(demo_plugin)
    bad["version"] = 99
    ok, log = envoy_validate(demo_with_plugin(json.dumps(bad, indent=2)), "demo.yaml with version 99")
    require(not ok, "Envoy accepted a plugin config with an unknown version: validation proves nothing\n" + log)
    require("unsupported configuration version" in log, "expected the filter's own error in Envoy's log\n" + log)


@check("the broker credential comes from Envoy's environment: production.yaml is refused without it (control)")
def production_needs_the_credential_variable():
    ok, log = envoy_validate(PRODUCTION.read_text(), f"{rel(PRODUCTION)} without {CREDENTIAL_ENV}", env={})
    require(not ok, f"Envoy accepted {rel(PRODUCTION)} without {CREDENTIAL_ENV}: the credential check proves nothing\n" + log)
    require(f"{CREDENTIAL_ENV} is not set" in log, "expected the filter's own error in Envoy's log\n" + log)


# ---- plugin JSON everywhere --------------------------------------------------------


def key_paths(value, prefix="", out=None) -> set[str]:
    out = set() if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else k
            out.add(path)
            key_paths(v, path, out)
    elif isinstance(value, list):
        for v in value:
            key_paths(v, prefix + "[]", out)
    return out


def compare_plugin_schema(plugin: dict, demo: dict, label: str):
    # The credential inline or from the VM's environment: one setting in two forms.
    same = lambda paths: {"broker.credential" if p == "broker.credential_env" else p for p in paths}
    mine, theirs = same(key_paths(plugin)), same(key_paths(demo))
    rules = "policy.rules[]"
    outside = lambda s: {p for p in s if not p.startswith(rules + ".")}
    missing = sorted(outside(theirs) - outside(mine))
    extra = sorted(outside(mine) - outside(theirs))
    unknown_rule_keys = sorted((mine - outside(mine)) - (theirs - outside(theirs)))
    problems = []
    if missing:
        problems.append(f"keys the demo has and {label} lacks: {missing}")
    if extra:
        problems.append(f"keys {label} has and the demo lacks: {extra}")
    if unknown_rule_keys:
        problems.append(f"rule keys the demo's rules never use: {unknown_rule_keys}")
    require(not problems, "; ".join(problems))


def demo_plugin() -> dict:
    plugins = plugin_json_of_envoy_config(yaml.safe_load(DEMO.read_text()))
    require(len(plugins) == 1, f"envoy/demo.yaml: expected one lookergate filter, found {len(plugins)}")
    return json.loads(plugins[0])


def envoy_filter_wasm_configs(doc: dict) -> list[dict]:
    """The Wasm PluginConfigs an Istio EnvoyFilter adds as extension configs."""
    return [
        p["patch"]["value"]["typed_config"]["config"]
        for p in doc["spec"].get("configPatches", [])
        if p.get("applyTo") == "EXTENSION_CONFIG"
        and p["patch"]["value"].get("typed_config", {}).get("@type", "").endswith("filters.http.wasm.v3.Wasm")
    ]


def manifest_plugins() -> list[tuple[str, dict]]:
    """(label, plugin config) from the WasmPlugin, EnvoyFilter and EnvoyExtensionPolicy manifests."""
    found = []
    for path in sorted(ISTIO_DIR.glob("*.yaml")) + sorted(EG_DIR.glob("*.yaml")) + sorted(K8S_DIR.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            if doc.get("kind") == "WasmPlugin":
                found.append((f"{rel(path)} WasmPlugin.spec.pluginConfig", doc["spec"].get("pluginConfig")))
            if doc.get("kind") == "EnvoyFilter":
                for config in envoy_filter_wasm_configs(doc):
                    value = config.get("configuration", {}).get("value")
                    try:
                        plugin = json.loads(value) if isinstance(value, str) else None
                    except json.JSONDecodeError as e:
                        raise CheckFailed(f"{rel(path)} EnvoyFilter: plugin configuration is not JSON: {e}") from e
                    found.append((f"{rel(path)} EnvoyFilter extension config {config.get('name')}", plugin))
            if doc.get("kind") == "EnvoyExtensionPolicy":
                for i, wasm in enumerate(doc["spec"].get("wasm", [])):
                    found.append((f"{rel(path)} EnvoyExtensionPolicy.spec.wasm[{i}].config", wasm.get("config")))
    return found


def check_envoy_config_plugins(path: Path):
    plugins = plugin_json_of_envoy_config(yaml.safe_load(path.read_text()))
    require(plugins, f"{rel(path)}: no {WASM_FILTER} filter")
    for text in plugins:
        try:
            plugin = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckFailed(f"{rel(path)}: plugin configuration is not JSON: {e}") from e
        compare_plugin_schema(plugin, demo_plugin(), rel(path))


for _path in envoy_configs():
    # The fleet's plugin is the demo's plus a global budget: checked by fleet_broker_replicas.
    if _path not in (DEMO, FLEET):
        check(f"plugin JSON of {rel(_path)} has the demo's keys")(lambda p=_path: check_envoy_config_plugins(p))


@check("every Envoy config runs the filter FAIL_CLOSED")
def every_filter_fails_closed():
    for path in envoy_configs():
        for wasm in wasm_filters(yaml.safe_load(path.read_text())):
            require(wasm.get("failure_policy") == "FAIL_CLOSED", f"{rel(path)}: failure_policy is {wasm.get('failure_policy')!r}")


def host_env_keys(vm_config: dict) -> list:
    return vm_config.get("environment_variables", {}).get("host_env_keys", [])


@check("no shipped config or manifest holds the broker credential: each names a variable its Wasm VM gets")
def credentials_out_of_plain_resources():
    shipped = []  # (label, plugin, variables passed into the VM)
    for path in envoy_configs():
        if path in (DEMO, COMPOSE_ENVOY) or ROOT / "bench" in path.parents or FLEET_DIR in path.parents:
            continue  # local demo, fleet and bench configs carry the demo credential on purpose
        for wasm in wasm_filters(yaml.safe_load(path.read_text())):
            plugin = json.loads(wasm["configuration"]["value"])
            shipped.append((rel(path), plugin, host_env_keys(wasm.get("vm_config", {}))))
    for path in sorted(ISTIO_DIR.glob("*.yaml")) + sorted(EG_DIR.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            if doc.get("kind") == "EnvoyFilter":
                for config in envoy_filter_wasm_configs(doc):
                    plugin = json.loads(config["configuration"]["value"])
                    shipped.append((f"{rel(path)} EnvoyFilter", plugin, host_env_keys(config.get("vm_config", {}))))
            if doc.get("kind") == "EnvoyExtensionPolicy":
                for wasm in doc["spec"].get("wasm", []):
                    shipped.append((f"{rel(path)} EnvoyExtensionPolicy", wasm.get("config", {}), wasm.get("env", {}).get("hostKeys", [])))
    require(len(shipped) >= 3, f"expected production.yaml, the Istio EnvoyFilter and the EnvoyExtensionPolicy, found {[l for l, _, _ in shipped]}")
    for label, plugin, passed in shipped:
        broker = plugin.get("broker", {})
        require("credential" not in broker, f"{label}: broker.credential is inline; use broker.credential_env")
        require(broker.get("credential_env") == CREDENTIAL_ENV, f"{label}: broker.credential_env is not {CREDENTIAL_ENV}")
        require(CREDENTIAL_ENV in passed, f"{label}: the Wasm VM does not get {CREDENTIAL_ENV} (host_env_keys / env.hostKeys: {passed})")
    # Envoy Gateway: the proxy's container has the variable, from a Secret.
    proxies = [d for d in load_yaml_documents(EG_DIR / "gateway.yaml") if d.get("kind") == "EnvoyProxy"]
    require(len(proxies) == 1, f"envoy/envoy-gateway/gateway.yaml: expected one EnvoyProxy, found {len(proxies)}")
    env = proxies[0]["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"]
    require(
        any(e.get("name") == CREDENTIAL_ENV and "secretKeyRef" in e.get("valueFrom", {}) for e in env),
        f"the EnvoyProxy does not set {CREDENTIAL_ENV} from a Secret",
    )
    gateways = [d for d in load_yaml_documents(EG_DIR / "gateway.yaml") if d.get("kind") == "Gateway"]
    require(
        all(g["spec"].get("infrastructure", {}).get("parametersRef", {}).get("name") == proxies[0]["metadata"]["name"] for g in gateways),
        "the Gateway does not use the EnvoyProxy that carries the credential",
    )


@check("manifest plugin configs have the demo's keys and the filter accepts them")
def manifest_plugin_configs():
    found = manifest_plugins()
    require(len(found) >= 2, f"expected an Istio EnvoyFilter and an EnvoyExtensionPolicy, found {[l for l, _ in found]}")
    for label, plugin in found:
        require(isinstance(plugin, dict), f"{label}: missing or not a mapping")
        text = json.dumps(plugin, indent=2)
        compare_plugin_schema(json.loads(text), demo_plugin(), label)
        ok, log = envoy_validate(demo_with_plugin(text), f"demo.yaml with {label}")
        require(ok, log)


# ---- docker compose ----------------------------------------------------------------


def compose_transform(demo: dict) -> dict:
    """What envoy/compose.yaml must be, structurally: the demo with container addresses."""
    out = copy.deepcopy(demo)
    out["admin"]["address"]["socket_address"]["address"] = "0.0.0.0"
    for listener in out["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["address"] = "0.0.0.0"
    for wasm in wasm_filters(out):
        wasm["vm_config"]["code"]["local"]["filename"] = CONTAINER_WASM
    for cluster in out["static_resources"]["clusters"]:
        name = cluster["name"]
        cluster["type"] = "STRICT_DNS"
        if not cluster["load_assignment"].get("endpoints"):
            continue  # a cluster with no endpoints (the embed prefix's): nothing to map
        require(name in COMPOSE_UPSTREAMS, f"demo.yaml cluster {name!r} has no compose service (COMPOSE_UPSTREAMS)")
        for group in cluster["load_assignment"]["endpoints"]:
            for lb in group["lb_endpoints"]:
                lb["endpoint"]["address"]["socket_address"]["address"] = COMPOSE_UPSTREAMS[name]
    return out


COMPOSE_HEADER = """\
# GENERATED from envoy/demo.yaml by `python3 tests/deploy_check.py --write-compose`;
# `make deploy-check` fails when the two differ. Do not edit: change demo.yaml instead.
# envoy/docker-compose.yaml mounts this as /etc/envoy/envoy.yaml: the demo config with the
# compose services as upstreams (STRICT_DNS), listeners on 0.0.0.0 inside the container
# (published on the host's loopback only) and the filter at {wasm}, where
# envoy/Dockerfile builds it into the image.
""".format(wasm=CONTAINER_WASM)


def compose_text() -> str:
    text = DEMO.read_text()
    body = text[re.search(r"^[a-z]", text, re.M).start():]  # drop the demo's header comment
    body = re.sub(r"(socket_address: \{ address: )127\.0\.0\.1(, port_value: (?:9901|10000|10443) \})", r"\g<1>0.0.0.0\g<2>", body)
    body = re.sub(r"(filename: )\S+\.wasm", rf"\g<1>{CONTAINER_WASM}", body)
    body = body.replace("type: STATIC", "type: STRICT_DNS")
    for port, service in (("10080", "looker-sim"), ("10090", "broker"), ("10070", "idp")):
        body = body.replace(f"address: 127.0.0.1, port_value: {port} }}", f"address: {service}, port_value: {port} }}")
    return COMPOSE_HEADER + body


@check("envoy/compose.yaml is envoy/demo.yaml with the compose addresses")
def compose_matches_demo():
    expected = compose_transform(yaml.safe_load(DEMO.read_text()))
    actual = yaml.safe_load(COMPOSE_ENVOY.read_text())
    require(
        actual == expected,
        "envoy/compose.yaml differs from envoy/demo.yaml beyond the compose addresses; "
        "run `python3 tests/deploy_check.py --write-compose`",
    )


COMPOSE_TOP = {"name", "services", "networks", "volumes", "configs", "secrets", "include"}
COMPOSE_SERVICE = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose",
    "volumes", "depends_on", "healthcheck", "restart", "user", "working_dir", "networks",
    "read_only", "tmpfs", "cap_drop", "cap_add", "security_opt", "labels", "logging",
    "deploy", "stop_signal", "stop_grace_period", "init", "profiles", "container_name",
    "configs", "secrets", "ulimits", "extra_hosts", "pull_policy", "platform",
}
COMPOSE_BUILD = {"context", "dockerfile", "args", "target", "cache_from", "labels", "platforms", "secrets", "ssh", "network", "tags"}


def makefile_envoy_version() -> str:
    m = re.search(r"^ENVOY_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    require(m is not None, "Makefile: no ENVOY_VERSION")
    return m.group(1)


def listen_port(command) -> int | None:
    command = command or []
    for i, arg in enumerate(command):
        if arg == "--listen" and i + 1 < len(command):
            return int(command[i + 1].rsplit(":", 1)[1])
    return None


@check("envoy/docker-compose.yaml: structure, images, build contexts, mounts")
def docker_compose_file():
    compose = yaml.safe_load(DOCKER_COMPOSE.read_text())
    base = DOCKER_COMPOSE.parent
    require(set(compose) <= COMPOSE_TOP | {k for k in compose if k.startswith("x-")}, f"unknown top-level keys {set(compose) - COMPOSE_TOP}")
    services = compose.get("services", {})
    require({"envoy", "broker", "looker-sim", "idp"} <= set(services), f"services are {sorted(services)}")
    for name, svc in services.items():
        unknown = set(svc) - COMPOSE_SERVICE
        require(not unknown, f"service {name}: unknown keys {sorted(unknown)}")
        require("image" in svc or "build" in svc, f"service {name}: neither image nor build")
        for dep in svc.get("depends_on", []):
            require(dep in services, f"service {name}: depends_on unknown service {dep}")
        for port in svc.get("ports", []):
            require(str(port).startswith("127.0.0.1:"), f"service {name}: port {port} is published beyond loopback")
        if "build" in svc:
            build = svc["build"]
            require(set(build) <= COMPOSE_BUILD, f"service {name}: unknown build keys {set(build) - COMPOSE_BUILD}")
            context = (base / build["context"]).resolve()
            require(context == ROOT, f"service {name}: build context {context} is not the workspace root")
            require((context / build["dockerfile"]).is_file(), f"service {name}: no {build['dockerfile']}")
    envoy = services["envoy"]
    # Envoy and the filter come from envoy/Dockerfile (checked below): nothing the user
    # must build first, and no bind mount of a build output that Docker would create as an
    # empty directory when it is missing.
    build = envoy.get("build", {})
    require(build.get("dockerfile") == ENVOY_DOCKERFILE.relative_to(ROOT).as_posix(), f"envoy is not built from envoy/Dockerfile: {build}")
    require(build.get("target") in (None, ENVOY_STAGE), f"envoy builds stage {build.get('target')!r}, not {ENVOY_STAGE!r}")
    mounts = {}
    for volume in envoy.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = (base / source).resolve()
        require(mounts[target].is_file(), f"envoy mounts {source}, which is not a file in the repository (Docker would create a directory)")
    command = envoy.get("command", [])
    config_target = command[command.index("-c") + 1]
    require(mounts.get(config_target) == COMPOSE_ENVOY, f"{config_target} is not envoy/compose.yaml but {mounts.get(config_target)}")
    require(CONTAINER_WASM not in mounts, f"{CONTAINER_WASM} is mounted: it is built into the image")
    require({w["vm_config"]["code"]["local"]["filename"] for w in wasm_filters(yaml.safe_load(COMPOSE_ENVOY.read_text()))} == {CONTAINER_WASM}, f"envoy/compose.yaml does not load {CONTAINER_WASM}")
    # Upstream clusters in compose.yaml reach the services on the ports they listen on.
    config = yaml.safe_load(COMPOSE_ENVOY.read_text())
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"].get("endpoints", []):
            for lb in group["lb_endpoints"]:
                sa = lb["endpoint"]["address"]["socket_address"]
                require(sa["address"] in services, f"cluster {cluster['name']}: {sa['address']} is not a compose service")
                port = listen_port(services[sa["address"]].get("command"))
                require(port == sa["port_value"], f"cluster {cluster['name']}: port {sa['port_value']}, service listens on {port}")
    broker_env = services["broker"].get("environment", {})
    sim_port = listen_port(services["looker-sim"].get("command"))
    require(
        broker_env.get("LOOKERGATE_BROKER_LOOKER_URL") == f"http://looker-sim:{sim_port}",
        f"broker LOOKERGATE_BROKER_LOOKER_URL is {broker_env.get('LOOKERGATE_BROKER_LOOKER_URL')!r}",
    )


# ---- Dockerfiles -------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        lines.append((word.upper(), rest.strip()))
        current = ""
    require(not current, f"{rel(path)}: dangling line continuation")
    return lines


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    return [l.strip().rstrip("/") for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]


def workspace() -> tuple[list[str], dict[str, list[str]]]:
    """Workspace member dirs, and package name -> binary names."""
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    members = manifest["workspace"]["members"]
    bins = {}
    for member in members:
        pkg = tomllib.loads((ROOT / member / "Cargo.toml").read_text())
        name = pkg["package"]["name"]
        bins[name] = [b["name"] for b in pkg.get("bin", [])] or ([name] if (ROOT / member / "src/main.rs").exists() else [])
    return members, bins


def check_rust_dockerfile(path: Path, package: str, wasm: bool = False) -> list[tuple[str | None, list[tuple[str, str]]]]:
    """The checks every Dockerfile that builds from the workspace passes: pinned bases,
    COPY sources that exist and .dockerignore keeps, every workspace member copied before `cargo build --release --locked -p <package>`, which takes the
    package's binaries (or, `wasm`, builds lookergate.wasm for wasm32-wasip1). Returns the
    stages: (name, instructions)."""
    instructions = dockerfile_instructions(path)
    stages, copied, built = [], set(), False
    by_stage: list[tuple[str | None, list[tuple[str, str]]]] = []
    ignored = dockerignore_patterns()
    members, bins = workspace()
    for word, rest in instructions:
        if word == "FROM":
            by_stage.append((None, []))
        if by_stage:
            by_stage[-1][1].append((word, rest))
        require(
            word in {"FROM", "COPY", "ADD", "RUN", "ENTRYPOINT", "CMD", "USER", "EXPOSE", "WORKDIR", "ENV", "ARG", "LABEL"},
            f"{rel(path)}: unexpected instruction {word}",
        )
        if word == "FROM":
            parts = rest.split()
            image = parts[0]
            require(image == "scratch" or (":" in image and not image.endswith(":latest")), f"{rel(path)}: base image {image} is not pinned")
            stages.append(parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None)
            by_stage[-1] = (stages[-1], by_stage[-1][1])
        elif word in ("COPY", "ADD"):
            args = rest.split()
            flags = [a for a in args if a.startswith("--")]
            paths = [a for a in args if not a.startswith("--")]
            sources = paths[:-1]
            from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if from_stage:
                require(from_stage in stages[:-1], f"{rel(path)}: COPY --from={from_stage} names no earlier stage")
                continue
            for source in sources:
                require((ROOT / source).exists(), f"{rel(path)}: COPY source {source} does not exist")
                hit = [p for p in ignored if source == p or source.startswith(p + "/")]
                require(not hit, f"{rel(path)}: COPY source {source} is excluded by .dockerignore {hit}")
                copied.add(source.rstrip("/"))
        elif word == "RUN" and "cargo build" in rest:
            built = True
            m = re.search(r"-p\s+(\S+)", rest)
            require(m and m.group(1) == package, f"{rel(path)}: builds {m and m.group(1)}, expected {package}")
            require("--release" in rest and "--locked" in rest, f"{rel(path)}: cargo build without --release --locked")
            if wasm:
                require("--target wasm32-wasip1" in rest, f"{rel(path)}: cargo build without --target wasm32-wasip1")
                require("target/wasm32-wasip1/release/lookergate.wasm" in rest, f"{rel(path)}: does not take target/wasm32-wasip1/release/lookergate.wasm")
                require(any(w == "RUN" and "rustup target add wasm32-wasip1" in r for w, r in by_stage[-1][1]), f"{rel(path)}: the build stage does not add the wasm32-wasip1 target")
            for binary in [] if wasm else bins[package]:
                require(f"target/release/{binary}" in rest, f"{rel(path)}: does not take target/release/{binary}")
            # Cargo.toml's members, from the manifest.
            missing = sorted(m for m in members if m != "." and m not in copied)
            require(not missing, f"{rel(path)}: workspace members not copied before the build: {missing}")
            require({"Cargo.toml", "Cargo.lock", "src"} <= copied, f"{rel(path)}: root manifest, lock or src not copied")
    require(built, f"{rel(path)}: no cargo build")
    return by_stage


def check_native_dockerfile(path: Path, package: str):
    instructions = dockerfile_instructions(path)
    check_rust_dockerfile(path, package)
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]
    words = [w for w, _ in final]
    require("ENTRYPOINT" in words, f"{rel(path)}: final stage has no ENTRYPOINT")
    users = [r for w, r in final if w == "USER"]
    require(users and not users[-1].startswith(("root", "0")), f"{rel(path)}: final stage runs as root")
    entry = json.loads(next(r for w, r in final if w == "ENTRYPOINT"))
    _, bins = workspace()
    require(Path(entry[0]).name in bins[package], f"{rel(path)}: ENTRYPOINT {entry} is not a binary of {package}")


check("broker/Dockerfile: sources exist, builds lookergate-broker")(
    lambda: check_native_dockerfile(ROOT / "broker/Dockerfile", "lookergate-broker")
)
check("looker-sim/Dockerfile: sources exist, builds lookergate-looker-sim")(
    lambda: check_native_dockerfile(ROOT / "looker-sim/Dockerfile", "lookergate-looker-sim")
)
check("cli/Dockerfile: sources exist, builds lookergate-cli (the dev IdP)")(
    lambda: check_native_dockerfile(ROOT / "cli/Dockerfile", "lookergate-cli")
)

ENVOY_DOCKERFILE = ROOT / "envoy/Dockerfile"
ENVOY_STAGE, FILTER_STAGE = "envoy", "filter"


@check("envoy/Dockerfile: builds the filter for wasm32-wasip1 into the pinned Envoy image and an OCI filter image")
def envoy_dockerfile():
    stages = dict(check_rust_dockerfile(ENVOY_DOCKERFILE, "lookergate", wasm=True))
    require(list(stages)[-1] == ENVOY_STAGE, f"{rel(ENVOY_DOCKERFILE)}: the last (default) stage is not {ENVOY_STAGE!r}")
    build_stage = next(name for name, ins in stages.items() if any(w == "RUN" and "cargo build" in r for w, r in ins))
    version = makefile_envoy_version()
    envoy = stages[ENVOY_STAGE]
    require(envoy[0][1].split()[0] == f"envoyproxy/envoy:v{version}", f"{rel(ENVOY_DOCKERFILE)}: {envoy[0][1]} is not the pinned Envoy v{version}")
    require(("COPY", f"--from={build_stage} /out/lookergate.wasm {CONTAINER_WASM}") in envoy, f"{rel(ENVOY_DOCKERFILE)}: the module is not copied to {CONTAINER_WASM}")
    filter_stage = stages[FILTER_STAGE]
    require(filter_stage == [("FROM", f"scratch AS {FILTER_STAGE}"), ("COPY", f"--from={build_stage} /out/lookergate.wasm plugin.wasm")],
            f"{rel(ENVOY_DOCKERFILE)}: stage {FILTER_STAGE}: {filter_stage}")
    require("cp target/wasm32-wasip1/release/lookergate.wasm /out/lookergate.wasm" in " ".join(r for w, r in stages[build_stage] if w == "RUN"),
            f"{rel(ENVOY_DOCKERFILE)}: the build stage does not put the module at /out/lookergate.wasm")


@check("Dockerfile checks refuse a Dockerfile that misses a workspace member (control)")
def dockerfile_member_control():
    members, _ = workspace()
    member = next(m for m in members if m != "." and (ROOT / m).exists())
    with tempfile.TemporaryDirectory() as tmp:
        planted = Path(tmp) / "Dockerfile"
        planted.write_text("\n".join(l for l in ENVOY_DOCKERFILE.read_text().splitlines() if l.strip() != f"COPY {member} {member}") + "\n")
        try:
            check_rust_dockerfile(planted, "lookergate", wasm=True)
        except CheckFailed as e:
            require(member in str(e), f"failed for another reason: {e}")
        else:
            raise CheckFailed(f"a Dockerfile without COPY {member} passed")


@check("Cargo.toml rust-version is the highest rust-version of the locked dependencies; Rust images meet it")
def rust_version_is_real():
    declared = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    version = lambda s: tuple(int(x) for x in s.split("."))
    registry = sorted(Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"), "registry/src").glob("*"))
    needed, missing = [], []
    for package in tomllib.loads((ROOT / "Cargo.lock").read_text())["package"]:
        if not package.get("source", "").startswith("registry+"):
            continue
        found = [d / f"{package['name']}-{package['version']}/Cargo.toml" for d in registry]
        found = [f for f in found if f.exists()]
        if not found:
            missing.append(f"{package['name']} {package['version']}")
            continue
        rv = tomllib.loads(found[0].read_text()).get("package", {}).get("rust-version")
        if isinstance(rv, str):
            needed.append((version(rv), f"{package['name']} {package['version']}"))
    require(not missing, f"sources of {len(missing)} locked crates not in the cargo registry (run `cargo fetch`): {missing[:5]}")
    highest = max(needed)
    require(version(declared) == highest[0], f"rust-version {declared}, but {highest[1]} needs {'.'.join(map(str, highest[0]))}")
    for path in sorted(set(ROOT.glob("*/Dockerfile"))):
        for word, rest in dockerfile_instructions(path):
            m = re.match(r"rust:(\d+\.\d+)", rest) if word == "FROM" else None
            if m:
                require(version(m.group(1)) >= version(declared), f"{rel(path)}: {rest} is older than rust-version {declared}")


@check("envoy/istio/Dockerfile.wasm: FROM scratch, lookergate.wasm as plugin.wasm")
def wasm_image_dockerfile():
    path = ISTIO_DIR / "Dockerfile.wasm"
    instructions = dockerfile_instructions(path)
    require(instructions == [("FROM", "scratch"), ("COPY", "lookergate.wasm plugin.wasm")], f"{rel(path)}: {instructions}")
    # Its build context is the wasm build directory (documented in the file).
    require((WASM_DIR / "lookergate.wasm").exists(), f"{rel(WASM_DIR / 'lookergate.wasm')} missing (run `make wasm`)")
    require(str(WASM_DIR.relative_to(ROOT)) in path.read_text(), f"{rel(path)}: does not document its build context")


# ---- Kubernetes manifests ----------------------------------------------------------

ANY = None
WORKLOAD_SELECTOR = {"matchLabels": ANY}
TARGET_REF = {"group": ANY, "kind": ANY, "name": ANY, "namespace": ANY, "sectionName": ANY}
ISTIO_TLS = {
    "mode": ANY, "clientCertificate": ANY, "privateKey": ANY, "caCertificates": ANY, "credentialName": ANY,
    "subjectAltNames": ANY, "sni": ANY, "insecureSkipVerify": ANY, "caCrl": ANY,
}
ISTIO_POOL = {
    "tcp": {"maxConnections": ANY, "connectTimeout": ANY, "tcpKeepalive": ANY, "maxConnectionDuration": ANY, "idleTimeout": ANY},
    "http": {
        "http1MaxPendingRequests": ANY, "http2MaxRequests": ANY, "maxRequestsPerConnection": ANY, "maxRetries": ANY,
        "idleTimeout": ANY, "h2UpgradePolicy": ANY, "useClientProtocol": ANY, "maxConcurrentStreams": ANY, "http2KeepAlive": ANY,
    },
}
ISTIO_OUTLIER = {
    "consecutiveErrors": ANY, "splitExternalLocalOriginErrors": ANY, "consecutiveLocalOriginFailures": ANY,
    "consecutiveGatewayErrors": ANY, "consecutive5xxErrors": ANY, "interval": ANY, "baseEjectionTime": ANY,
    "maxEjectionPercent": ANY, "minHealthPercent": ANY, "outlierDetectionHttpErrorCodes": ANY,
}
ISTIO_STRING_MATCH = {"exact": ANY, "prefix": ANY, "regex": ANY}
ISTIO_HEADERS = {"request": {"set": ANY, "add": ANY, "remove": ANY}, "response": {"set": ANY, "add": ANY, "remove": ANY}}
GW_PATH_MATCH = {"type": ANY, "value": ANY}

# (apiVersion, kind) -> allowed spec fields, nested (lists: each item). Field names from
# istio/api (extensions/v1alpha1/wasm.proto, networking/v1alpha3, security/v1beta1), Envoy
# Gateway's api/v1alpha1 and Gateway API v1.
SCHEMAS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): {
        "selector": WORKLOAD_SELECTOR, "targetRef": TARGET_REF, "targetRefs": TARGET_REF, "url": ANY, "sha256": ANY,
        "imagePullPolicy": ANY, "imagePullSecret": ANY, "verificationKey": ANY, "pluginConfig": ANY, "pluginName": ANY,
        "phase": ANY, "priority": ANY, "failStrategy": ANY, "vmConfig": {"env": {"name": ANY, "value": ANY, "valueFrom": ANY}},
        "match": {"mode": ANY, "ports": {"number": ANY}}, "type": ANY,
    },
    # networking/v1alpha3/envoy_filter.proto; only the fields a patch of ours may use.
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): {
        "workloadSelector": {"labels": ANY}, "targetRefs": TARGET_REF, "priority": ANY,
        "configPatches": {
            "applyTo": ANY,
            "match": {
                "context": ANY, "proxy": ANY, "routeConfiguration": ANY, "cluster": ANY,
                "listener": {
                    "portNumber": ANY, "name": ANY, "listenerFilter": ANY,
                    "filterChain": {
                        "name": ANY, "sni": ANY, "transportProtocol": ANY, "applicationProtocols": ANY,
                        "destinationPort": ANY, "filter": {"name": ANY, "subFilter": {"name": ANY}},
                    },
                },
            },
            "patch": {"operation": ANY, "value": ANY, "filterClass": ANY},
        },
    },
    ("networking.istio.io/v1", "ServiceEntry"): {
        "hosts": ANY, "addresses": ANY, "ports": {"number": ANY, "protocol": ANY, "name": ANY, "targetPort": ANY},
        "location": ANY, "resolution": ANY, "endpoints": ANY, "workloadSelector": {"labels": ANY}, "exportTo": ANY,
        "subjectAltNames": ANY,
    },
    ("networking.istio.io/v1", "DestinationRule"): {
        "host": ANY, "exportTo": ANY, "subsets": ANY, "workloadSelector": WORKLOAD_SELECTOR,
        "trafficPolicy": {
            "loadBalancer": ANY, "connectionPool": ISTIO_POOL, "outlierDetection": ISTIO_OUTLIER, "tls": ISTIO_TLS,
            "portLevelSettings": {
                "port": {"number": ANY}, "loadBalancer": ANY, "connectionPool": ISTIO_POOL,
                "outlierDetection": ISTIO_OUTLIER, "tls": ISTIO_TLS,
            },
            "tunnel": ANY, "proxyProtocol": ANY, "retryBudget": ANY,
        },
    },
    ("networking.istio.io/v1", "Gateway"): {
        "selector": ANY,
        "servers": {
            "port": {"number": ANY, "protocol": ANY, "name": ANY}, "bind": ANY, "hosts": ANY, "defaultEndpoint": ANY, "name": ANY,
            "tls": {
                "httpsRedirect": ANY, "mode": ANY, "serverCertificate": ANY, "privateKey": ANY, "caCertificates": ANY,
                "credentialName": ANY, "credentialNames": ANY, "subjectAltNames": ANY, "minProtocolVersion": ANY,
                "maxProtocolVersion": ANY, "cipherSuites": ANY,
            },
        },
    },
    ("networking.istio.io/v1", "VirtualService"): {
        "hosts": ANY, "gateways": ANY, "exportTo": ANY, "tls": ANY, "tcp": ANY,
        "http": {
            "name": ANY, "timeout": ANY, "retries": {"attempts": ANY, "perTryTimeout": ANY, "retryOn": ANY},
            "match": {"name": ANY, "uri": ISTIO_STRING_MATCH, "method": ISTIO_STRING_MATCH, "headers": ANY, "port": ANY, "gateways": ANY},
            "route": {"destination": {"host": ANY, "subset": ANY, "port": {"number": ANY}}, "weight": ANY, "headers": ISTIO_HEADERS},
            "rewrite": {"uri": ANY, "authority": ANY}, "headers": ISTIO_HEADERS, "redirect": ANY, "directResponse": ANY,
            "fault": ANY, "mirror": ANY, "corsPolicy": ANY,
        },
    },
    # security/v1beta1/authorization_policy.proto
    ("security.istio.io/v1", "AuthorizationPolicy"): {
        "selector": WORKLOAD_SELECTOR, "targetRef": TARGET_REF, "targetRefs": TARGET_REF, "action": ANY, "provider": ANY,
        "rules": {"from": ANY, "to": ANY, "when": {"key": ANY, "values": ANY, "notValues": ANY}},
    },
    ("security.istio.io/v1", "PeerAuthentication"): {
        "selector": WORKLOAD_SELECTOR, "mtls": {"mode": ANY}, "portLevelMtls": ANY,
    },
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"): {
        "targetRef": TARGET_REF, "targetRefs": TARGET_REF, "targetSelectors": ANY, "mergeType": ANY,
        "wasm": {
            "name": ANY, "rootID": ANY, "config": ANY, "failOpen": ANY, "env": {"hostKeys": ANY},
            "code": {
                "type": ANY, "pullPolicy": ANY,
                "http": {"url": ANY, "sha256": ANY, "tls": ANY},
                "image": {"url": ANY, "sha256": ANY, "pullSecretRef": ANY, "tls": ANY},
            },
        },
        "extProc": ANY, "lua": ANY, "dynamicModule": ANY,
    },
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"): {
        "provider": {"type": ANY, "kubernetes": {"envoyDeployment": {"container": {"env": ANY}}}},
        "bootstrap": {"type": ANY, "value": ANY},
    },
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyPatchPolicy"): {
        "type": ANY, "targetRef": TARGET_REF, "priority": ANY,
        "jsonPatches": {"type": ANY, "name": ANY, "operation": {"op": ANY, "path": ANY, "jsonPath": ANY, "from": ANY, "value": ANY}},
    },
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"): {
        "targetRef": TARGET_REF, "targetRefs": TARGET_REF, "targetSelectors": ANY,
        "clientIPDetection": {"xForwardedFor": {"numTrustedHops": ANY, "trustedCIDRs": ANY}, "customHeader": ANY},
        "tcpKeepalive": ANY, "enableProxyProtocol": ANY, "proxyProtocol": ANY, "tls": ANY, "path": ANY, "headers": ANY,
        "timeout": ANY, "connection": ANY, "http1": ANY, "http2": ANY, "http3": ANY, "grpc": ANY, "healthCheck": ANY,
        "scheme": ANY,
    },
    ("gateway.envoyproxy.io/v1alpha1", "Backend"): {
        "type": ANY, "appProtocols": ANY, "fallback": ANY,
        "endpoints": {"fqdn": {"hostname": ANY, "port": ANY}, "ip": {"address": ANY, "port": ANY}, "unix": {"path": ANY}, "hostname": ANY, "zone": ANY},
        "tls": {"caCertificateRefs": ANY, "wellKnownCACertificates": ANY, "insecureSkipVerify": ANY, "sni": ANY, "autoSNIFromEndpointHostname": ANY},
    },
    ("gateway.networking.k8s.io/v1", "GatewayClass"): {"controllerName": ANY, "parametersRef": ANY, "description": ANY},
    ("gateway.networking.k8s.io/v1", "Gateway"): {
        "gatewayClassName": ANY, "addresses": ANY, "infrastructure": ANY, "backendTLS": ANY, "allowedListeners": ANY,
        "listeners": {
            "name": ANY, "hostname": ANY, "port": ANY, "protocol": ANY,
            "tls": {"mode": ANY, "certificateRefs": {"group": ANY, "kind": ANY, "name": ANY, "namespace": ANY}, "options": ANY, "frontendValidation": ANY},
            "allowedRoutes": {"namespaces": {"from": ANY, "selector": ANY}, "kinds": ANY},
        },
    },
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): {
        "parentRefs": {"group": ANY, "kind": ANY, "namespace": ANY, "name": ANY, "sectionName": ANY, "port": ANY},
        "hostnames": ANY,
        "rules": {
            "name": ANY, "matches": {"path": GW_PATH_MATCH, "headers": ANY, "queryParams": ANY, "method": ANY},
            "filters": {"type": ANY, "urlRewrite": {"hostname": ANY, "path": ANY}, "requestHeaderModifier": ANY},
            "backendRefs": {"group": ANY, "kind": ANY, "name": ANY, "namespace": ANY, "port": ANY, "weight": ANY, "filters": ANY},
            "timeouts": {"request": ANY, "backendRequest": ANY}, "retry": ANY, "sessionPersistence": ANY,
        },
    },
}


# Kinds without a namespace.
CLUSTER_SCOPED = {"GatewayClass"}
# Shipped Kubernetes kinds (envoy/kubernetes), validated against kubernetes-models only.
CORE_KINDS = {
    ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"), ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"), ("networking.k8s.io/v1", "NetworkPolicy"),
}


def unknown_fields(value, schema, path) -> list[str]:
    if schema is ANY:
        return []
    if isinstance(value, list):
        return [u for i, v in enumerate(value) for u in unknown_fields(v, schema, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path}: expected a mapping"]
    out = []
    for key, sub in value.items():
        if key not in schema:
            out.append(f"{path}.{key}")
        else:
            out.extend(unknown_fields(sub, schema[key], f"{path}.{key}"))
    return out


YAML11_BOOLS = {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"}


def yaml11_traps(path: Path) -> list[str]:
    """Plain scalars that Kubernetes (YAML 1.1) reads as booleans but PyYAML as strings."""
    out = []

    def walk(node):
        if isinstance(node, yaml.ScalarNode):
            if node.style is None and node.value in YAML11_BOOLS and node.tag == "tag:yaml.org,2002:str":
                out.append(f"{rel(path)}:{node.start_mark.line + 1}: bare {node.value!r} (quote it)")
        elif isinstance(node, yaml.SequenceNode):
            for n in node.value:
                walk(n)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                walk(k)
                walk(v)

    with path.open() as f:
        for doc in yaml.compose_all(f):
            walk(doc)
    return out


def manifests() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(ISTIO_DIR.glob("*.yaml")) + sorted(EG_DIR.glob("*.yaml")) + sorted(K8S_DIR.glob("*.yaml")):
        out.extend((path, doc) for doc in load_yaml_documents(path))
    return out


@check("manifests: known apiVersion/kind, metadata, spec field names")
def manifest_fields():
    docs = manifests()
    require(docs, "no manifests found")
    problems = []
    for path in sorted({p for p, _ in docs}):
        problems.extend(yaml11_traps(path))
    for path, doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        label = f"{rel(path)} {key[1]}/{doc.get('metadata', {}).get('name')}"
        if key in CORE_KINDS:
            # Kubernetes' own kinds: their fields are checked by the real schemas below.
            meta = doc.get("metadata", {})
            if not meta.get("name") or not meta.get("namespace"):
                problems.append(f"{label}: metadata needs a name and a namespace")
            continue
        if key not in SCHEMAS:
            problems.append(f"{label}: unexpected apiVersion/kind {key}")
            continue
        require(set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"{label}: top-level keys {sorted(doc)}")
        meta = doc.get("metadata", {})
        if not meta.get("name") or (not meta.get("namespace")) != (key[1] in CLUSTER_SCOPED):
            problems.append(f"{label}: metadata needs a name, and a namespace unless the kind is cluster-scoped")
        problems.extend(f"{label}: unknown field {u}" for u in unknown_fields(doc.get("spec"), SCHEMAS[key], "spec"))
    require(not problems, "\n".join(problems))


# ---- manifests against the real API schemas -----------------------------------------

# tests/schema/package.json pins them (tests/schema/package-lock.json: integrity); they
# are installed into tests/.schema-cache (ignored) on first use and reused after.
SCHEMA_DIR = ROOT / "tests/schema"
SCHEMA_CACHE = ROOT / "tests/.schema-cache"
VALIDATOR = ROOT / "tests/validate_manifests.mjs"
# npm package -> (version, the upstream API it was generated from). Checked against
# tests/schema/package.json, the installed packages and, for Istio, the CRD file its
# metadata names; the generated-from versions of the Go-generated ones are in their
# changelogs (tests/schema/README.md).
SCHEMA_SOURCES = {
    "@kubernetes-models/istio": ("3.0.1", "Istio 1.29.2 (crd-all.gen.yaml)"),
    "@kubernetes-models/gateway-api": ("2.0.0", "Gateway API v1.5.1"),
    "@kubernetes-models/envoy-gateway": ("2.0.0", "Envoy Gateway v1.7.3"),
    "kubernetes-models": ("5.1.0", "Kubernetes 1.36.0"),
}
ISTIO_CRD_SOURCE = "istio/istio/1.29.2/manifests/charts/base/files/crd-all.gen.yaml"
# Fields the schemas leave free-form (x-kubernetes-preserve-unknown-fields): Envoy config
# and the plugin JSON, checked above (envoy --mode validate, the plugin schema) and by
# tests/mesh_patch_check.py. Their contents are not probed for unknown fields.
FREE_FORM = {
    "EnvoyFilter": ["spec.configPatches[].patch.value"],
    "EnvoyExtensionPolicy": ["spec.wasm[].config"],
    "EnvoyPatchPolicy": ["spec.jsonPatches[].operation.value"],
}


def schema_packages() -> Path:
    """tests/.schema-cache with the pinned packages (`npm ci` when the lock changed)."""
    lock = (SCHEMA_DIR / "package-lock.json").read_bytes()
    stamp = SCHEMA_CACHE / "installed.lock.json"
    if not (stamp.exists() and stamp.read_bytes() == lock and (SCHEMA_CACHE / "node_modules").is_dir()):
        SCHEMA_CACHE.mkdir(exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            (SCHEMA_CACHE / name).write_bytes((SCHEMA_DIR / name).read_bytes())
        # The packages declare node >= 22 and run on the machine's 20 (plain ES2022 + ajv).
        done = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(SCHEMA_CACHE)],
            capture_output=True, text=True,
        )
        require(done.returncode == 0, f"npm ci in {rel(SCHEMA_CACHE)} failed:\n{done.stdout}{done.stderr}")
        stamp.write_bytes(lock)
    return SCHEMA_CACHE


def schema_problems(items: list[tuple[str, dict, list[str]]]) -> dict[str, tuple[str | None, list[str]]]:
    """label -> (package@version that validated it, errors) for (label, document, free-form fields)."""
    payload = [{"label": label, "doc": doc, "freeForm": free} for label, doc, free in items]
    done = subprocess.run(["node", str(VALIDATOR), str(schema_packages())], input=json.dumps(payload), capture_output=True, text=True)
    require(done.returncode == 0, f"{rel(VALIDATOR)} failed:\n{done.stderr}")
    return {r["label"]: (r["schema"], r["errors"]) for r in json.loads(done.stdout)}


def manifest_label(path: Path, doc: dict) -> str:
    return f"{rel(path)} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


@check("manifests: valid against the real API schemas (Istio 1.29.2, Gateway API v1.5.1, Envoy Gateway v1.7.3): types, enums, required fields, no unknown field")
def manifest_schemas():
    manifest = json.loads((SCHEMA_DIR / "package.json").read_text())
    pinned = manifest["dependencies"]
    require(pinned == {name: v for name, (v, _) in SCHEMA_SOURCES.items()}, f"tests/schema/package.json pins {pinned}, SCHEMA_SOURCES says {SCHEMA_SOURCES}")
    cache = schema_packages()
    for name, (version, _) in SCHEMA_SOURCES.items():
        installed = json.loads((cache / "node_modules" / name / "package.json").read_text())
        require(installed["version"] == version, f"{name}: {installed['version']} installed, {version} pinned")
        if name == "@kubernetes-models/istio":
            inputs = installed.get("crd-generate", {}).get("input", [])
            require(any(ISTIO_CRD_SOURCE in url for url in inputs), f"{name} was generated from {inputs}, not {ISTIO_CRD_SOURCE}")
    docs = manifests()
    results = schema_problems([(manifest_label(p, d), d, FREE_FORM.get(d.get("kind"), [])) for p, d in docs])
    problems = [f"{label} ({schema or 'no schema'}): {e}" for label, (schema, errors) in results.items() for e in errors]
    require(len(results) == len(docs), f"{len(docs)} documents, {len(results)} results (duplicate kind/name in a file?)")
    require(not problems, "\n".join(problems))


REMOVE = object()


def set_field(path: str, value):
    """A change that sets (or, with REMOVE, deletes) the dotted `path` of a document."""

    def change(doc):
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = doc
        for key in parents:
            node = node[key]
        if value is REMOVE:
            del node[last]
        else:
            node[last] = value

    return change


# Planted errors, one per copy of a shipped document: (kind, what, change, error expected).
SCHEMA_CONTROLS = [
    ("EnvoyFilter", "wrong enum", set_field("spec.configPatches.0.applyTo", "HTTP_FILTR"), "spec.configPatches[0].applyTo: must be one of"),
    ("VirtualService", "wrong type", set_field("spec.http.0.timeout", 300), "spec.http[0].timeout: must be string"),
    ("VirtualService", "a string for a list", set_field("spec.hosts", "looker-api.example.com"), "spec.hosts: must be array"),
    ("AuthorizationPolicy", "wrong enum", set_field("spec.action", "DENI"), "spec.action: must be one of"),
    ("ServiceEntry", "unknown field", set_field("spec.exportto", ["."]), "spec.exportto: unknown field"),
    ("DestinationRule", "metadata typo", set_field("metadata.namspace", "istio-ingress"), "metadata.namspace: unknown field"),
    ("HTTPRoute", "missing required field", set_field("spec.parentRefs.0.name", REMOVE), 'spec.parentRefs[0]: missing required field "name"'),
    ("HTTPRoute", "wrong enum", set_field("spec.rules.0.matches.0.path.type", "Prefix"), "spec.rules[0].matches[0].path.type: must be one of"),
    ("Gateway", "unknown field (Gateway API)", set_field("spec.listeners.0.tls.certificateRef", []), "spec.listeners[0].tls.certificateRef: unknown field"),
    ("EnvoyExtensionPolicy", "wrong enum", set_field("spec.wasm.0.code.type", "OCI"), "spec.wasm[0].code.type: must be one of"),
    ("EnvoyPatchPolicy", "wrong enum", set_field("spec.jsonPatches.0.operation.op", "insert"), "spec.jsonPatches[0].operation.op: must be one of"),
    ("Backend", "unknown field", set_field("spec.tls.snii", "x"), "spec.tls.snii: unknown field"),
    ("ClientTrafficPolicy", "wrong type", set_field("spec.clientIPDetection.xForwardedFor.numTrustedHops", "0"), "spec.clientIPDetection.xForwardedFor.numTrustedHops: must be integer"),
]


@check("manifests: planted errors fail the schema check (control: wrong enums, types, a missing required field, unknown fields, a field wrongly declared free-form, a core kind, an unknown apiVersion)")
def manifest_schemas_control():
    shipped = {}
    for _, doc in manifests():
        # Kind names are unique but for Gateway, where the controls mean Gateway API's.
        if not (doc["kind"] == "Gateway" and doc["apiVersion"].startswith("networking.istio.io/")):
            shipped.setdefault(doc["kind"], doc)
    items, expected = [], {}
    for kind, what, change, error in SCHEMA_CONTROLS:
        doc = copy.deepcopy(shipped[kind])
        change(doc)
        label = f"{kind}: {what}"
        items.append((label, doc, FREE_FORM.get(kind, [])))
        expected[label] = error
    # A free-form declaration over a field the schema types would hide typos beneath it.
    items.append(("EnvoyFilter: match declared free-form", shipped["EnvoyFilter"], ["spec.configPatches[].match"]))
    expected["EnvoyFilter: match declared free-form"] = "spec.configPatches[0].match: declared free-form, but the schema types"
    # Core kinds are validated too: Kubernetes' own schema (a copy of the shipped broker Deployment's shape).
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "lookergate-broker", "namespace": "lookergate"},
        "spec": {"selector": {"matchLabels": {"app": "b"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {
            "containers": [{"name": "broker", "image": "lookergate-broker", "imagePullPolicy": "Sometimes"}]}}},
    }
    items.append(("Deployment: wrong enum", deployment, []))
    expected["Deployment: wrong enum"] = "spec.template.spec.containers[0].imagePullPolicy: must be one of"
    planted = copy.deepcopy(shipped["EnvoyFilter"])
    planted["apiVersion"] = "networking.istio.io/v1alpha4"
    items.append(("EnvoyFilter: unknown apiVersion", planted, []))
    expected["EnvoyFilter: unknown apiVersion"] = "@kubernetes-models/istio has no networking.istio.io/v1alpha4 EnvoyFilter"
    results = schema_problems(items)
    problems = []
    for label, error in expected.items():
        _, errors = results[label]
        if not any(e.startswith(error) for e in errors):
            problems.append(f"{label}: expected {error!r}, got {errors}")
    require(not problems, "\n".join(problems))


def docs_of(kind: str) -> list[dict]:
    return [d for _, d in manifests() if d.get("kind") == kind]


def istio_cluster(host: str, port: int) -> str:
    return f"outbound|{port}||{host}"


@check("Kubernetes: the broker Deployment is hardened, probed, configured from the ConfigMap and Secret; Service, PDB and NetworkPolicy match it and the gateways")
def kubernetes_broker():
    (deployment,) = [d for d in docs_of("Deployment") if d["metadata"]["name"] == "lookergate-broker"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    require(deployment["spec"]["selector"]["matchLabels"] == labels == {"app": "lookergate-broker"}, f"labels {labels}")
    require(pod["securityContext"].get("runAsNonRoot") is True and pod["securityContext"].get("runAsUser", 0) != 0, "the pod may run as root")
    require(pod["securityContext"].get("seccompProfile") == {"type": "RuntimeDefault"}, "seccomp is not RuntimeDefault")
    (container,) = pod["containers"]
    sc = container["securityContext"]
    require(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities") == {"drop": ["ALL"]}, f"container securityContext {sc}")
    require(container["resources"].get("requests") and container["resources"].get("limits"), "no resources")
    require(container["livenessProbe"]["httpGet"]["path"] == "/healthz" and container["readinessProbe"]["httpGet"]["path"] == "/readyz", "probes are not /healthz and /readyz")
    env = {e["name"]: e for e in container.get("env", [])}
    require(env.get("LOOKERGATE_BROKER_LISTEN", {}).get("value") == "0.0.0.0:10090", "the broker would listen on 127.0.0.1")
    require("valueFrom" in env.get("LOOKERGATE_BROKER_GATEWAY_CREDENTIALS", {}), "gateway credentials not from the Secret")
    port = container["ports"][0]["containerPort"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config_map,) = [d for d in docs_of("ConfigMap") if d["metadata"]["name"] == "lookergate-broker"]
    (secret,) = [d for d in docs_of("Secret") if d["metadata"]["name"] == "lookergate-broker"]
    require(container["args"] == ["--config", "/etc/lookergate/broker.toml"], f"args {container['args']}")
    config_mount = mounts["/etc/lookergate/broker.toml"]
    require(volumes[config_mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"], "broker.toml is not the ConfigMap's")
    config = tomllib.loads(config_map["data"][config_mount["subPath"]])
    secret_mount = next(m for m in container["volumeMounts"] if "secret" in volumes[m["name"]])
    require(secret_mount.get("readOnly") is True, "the Secret mount is writable")
    files = {f"{secret_mount['mountPath']}/{i['path']}" for i in volumes[secret_mount["name"]]["secret"]["items"]}
    require(set(secret["stringData"]) >= {i["key"] for i in volumes[secret_mount["name"]]["secret"]["items"]} | {env["LOOKERGATE_BROKER_GATEWAY_CREDENTIALS"]["valueFrom"]["secretKeyRef"]["key"]}, "the Deployment uses keys the Secret lacks")
    require(all("REPLACE" in v for v in secret["stringData"].values()), "a Secret value is not a REPLACE placeholder")
    sections = list(config.get("roles", {}).values()) + ([config["sudo"]] if "sudo" in config else [])
    for section in sections:
        require("client_secret" not in section, "a client secret inline in the ConfigMap")
        require(section.get("client_secret_file") in files, f"client_secret_file {section.get('client_secret_file')} is not a mounted Secret file {sorted(files)}")
    store = Path(config["rotated_credentials_file"])
    state = [m for m in container["volumeMounts"] if store.is_relative_to(m["mountPath"])]
    require(state and not state[0].get("readOnly"), "rotated_credentials_file is not on a writable volume")
    (service,) = [d for d in docs_of("Service") if d["metadata"]["name"] == "lookergate-broker"]
    require(service["spec"]["selector"] == labels and service["spec"]["ports"][0]["port"] == port, "Service does not match the Deployment")
    require(service["spec"].get("clusterIP") == "None", "the broker Service is not headless: the gateway would see one virtual IP, not the replicas")
    (se,) = [d for d in docs_of("ServiceEntry") if d["metadata"]["name"] == "lookergate-broker"]
    require(se["spec"]["workloadSelector"]["labels"] == labels and se["spec"]["ports"][0]["number"] == port, "Istio ServiceEntry does not select the broker pods")
    (pdb,) = docs_of("PodDisruptionBudget")
    require(pdb["spec"]["selector"]["matchLabels"] == labels and pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"], "PDB would block every eviction or selects other pods")
    (policy,) = docs_of("NetworkPolicy")
    require(policy["spec"]["podSelector"]["matchLabels"] == labels and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, "NetworkPolicy")
    (ingress,) = policy["spec"]["ingress"]
    require(ingress["ports"] == [{"port": port, "protocol": "TCP"}], f"ingress ports {ingress['ports']}")
    peers = {(p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], tuple(sorted(p["podSelector"]["matchLabels"].items()))) for p in ingress["from"]}
    (envoy_filter,) = docs_of("EnvoyFilter")
    istio = (envoy_filter["metadata"]["namespace"], tuple(sorted(envoy_filter["spec"]["workloadSelector"]["labels"].items())))
    (gateway,) = [g for g in docs_of("Gateway") if g["apiVersion"].startswith("gateway.networking.k8s.io/")]
    eg = ("envoy-gateway-system", tuple(sorted({"gateway.envoyproxy.io/owning-gateway-name": gateway["metadata"]["name"], "gateway.envoyproxy.io/owning-gateway-namespace": gateway["metadata"]["namespace"]}.items())))
    require(peers == {istio, eg}, f"NetworkPolicy ingress peers {peers}, want the pods the EnvoyFilter selects {istio} and the Gateway's proxies {eg}")


@check("Istio: EnvoyFilter (oci://, first HTTP filter via ECDS, FAIL_CLOSED, body access) calls the broker's ServiceEntry cluster")
def istio_manifests():
    # No WasmPlugin: the gateway would run lookergate twice (and a WasmPlugin cannot give
    # the filter body access: allow_on_headers_stop_iteration).
    require(not docs_of("WasmPlugin"), "a WasmPlugin is shipped beside the EnvoyFilter")
    (envoy_filter,) = docs_of("EnvoyFilter")
    patches = envoy_filter["spec"]["configPatches"]
    (config,) = envoy_filter_wasm_configs(envoy_filter)
    (extension,) = [p for p in patches if p["applyTo"] == "EXTENSION_CONFIG"]
    (insert,) = [p for p in patches if p["applyTo"] == "HTTP_FILTER"]
    require(extension["patch"]["operation"] == "ADD", "EXTENSION_CONFIG must be ADDed (Istio ignores MERGE there)")
    require(insert["patch"]["operation"] == "INSERT_FIRST", f"HTTP_FILTER operation {insert['patch']['operation']}")
    require({extension["match"]["context"], insert["match"]["context"]} == {"GATEWAY"}, "patches must match the GATEWAY context")
    require(
        insert["match"]["listener"]["filterChain"]["filter"]["name"] == "envoy.filters.network.http_connection_manager",
        "the filter must go into the HTTP connection manager",
    )
    reference = insert["patch"]["value"]
    require(reference["name"] == extension["patch"]["value"]["name"], "the HTTP filter does not name the extension config")
    discovery = reference["config_discovery"]
    require(discovery["config_source"].get("ads") == {} and "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm" in discovery["type_urls"], f"config_discovery {discovery}")
    require(config.get("allow_on_headers_stop_iteration") is True, "allow_on_headers_stop_iteration is not true: query guardrails would time out")
    require(config.get("failure_policy") == "FAIL_CLOSED", f"failure_policy {config.get('failure_policy')}")
    remote = config["vm_config"]["code"]["remote"]
    require(remote["http_uri"]["uri"].startswith("oci://") and remote.get("sha256"), f"code {remote}")
    broker = json.loads(config["configuration"]["value"])["broker"]
    entries = {h: se for se in docs_of("ServiceEntry") for h in se["spec"]["hosts"]}
    clusters = {istio_cluster(h, p["number"]): h for h, se in entries.items() for p in se["spec"]["ports"]}
    require(broker["cluster"] in clusters, f"broker.cluster {broker['cluster']!r} is none of the ServiceEntry clusters {sorted(clusters)}")
    require(broker["authority"] == clusters[broker["cluster"]], f"broker.authority {broker['authority']!r} is not the broker host")
    rules = {dr["spec"]["host"]: dr for dr in docs_of("DestinationRule")}
    require(set(entries) <= set(rules), f"ServiceEntry hosts without a DestinationRule: {set(entries) - set(rules)}")
    broker_dr = rules[clusters[broker["cluster"]]]["spec"]["trafficPolicy"]
    require(broker_dr.get("connectionPool") and broker_dr.get("outlierDetection"), "broker DestinationRule: no connection limits/outlier detection")
    # Looker: the host the VirtualService routes to, TLS originated with SNI.
    destinations = {r["destination"]["host"] for vs in docs_of("VirtualService") for h in vs["spec"]["http"] for r in h["route"]}
    require(destinations and destinations <= set(entries), f"VirtualService destinations {destinations} lack a ServiceEntry")
    for host in destinations:
        ports = {p["number"]: p for p in entries[host]["spec"]["ports"]}
        for setting in rules[host]["spec"]["trafficPolicy"].get("portLevelSettings", []):
            tls = setting.get("tls", {})
            require(tls.get("mode") == "SIMPLE" and tls.get("sni") == host, f"{host}: port {setting['port']} tls {tls}")
            require(ports[setting["port"]["number"]].get("targetPort") == 443, f"{host}: TLS port does not target 443")
        routed = {r["destination"]["port"]["number"] for vs in docs_of("VirtualService") for h in vs["spec"]["http"] for r in h["route"]}
        tls_ports = {s["port"]["number"] for s in rules[host]["spec"]["trafficPolicy"].get("portLevelSettings", []) if s.get("tls")}
        require(routed <= tls_ports, f"{host}: routes use ports {routed}, TLS is originated on {tls_ports}")
    (peer,) = docs_of("PeerAuthentication")
    require(peer["spec"]["mtls"]["mode"] == "STRICT", "broker PeerAuthentication is not STRICT")


@check("Envoy Gateway: EnvoyExtensionPolicy (Image, failOpen false) and the broker cluster patch")
def envoy_gateway_manifests():
    (policy,) = docs_of("EnvoyExtensionPolicy")
    (wasm,) = policy["spec"]["wasm"]
    require(wasm.get("failOpen") is False, f"failOpen is {wasm.get('failOpen')!r}, must be false")
    require(wasm["code"]["type"] == "Image" and wasm["code"]["image"]["url"], f"code {wasm['code']}")
    routes = {r["metadata"]["name"]: r for r in docs_of("HTTPRoute")}
    for ref in policy["spec"]["targetRefs"]:
        require(ref["kind"] == "HTTPRoute" and ref["name"] in routes, f"targetRef {ref} is not a shipped HTTPRoute")
    broker = wasm["config"]["broker"]
    added = {
        p["operation"]["value"]["name"]: p["operation"]["value"]
        for epp in docs_of("EnvoyPatchPolicy")
        for p in epp["spec"]["jsonPatches"]
        if p["type"].endswith("envoy.config.cluster.v3.Cluster") and p["operation"]["op"] == "add"
    }
    require(broker["cluster"] in added, f"broker.cluster {broker['cluster']!r} is not added by an EnvoyPatchPolicy ({sorted(added)})")
    cluster = added[broker["cluster"]]
    require(cluster.get("circuit_breakers"), "the broker cluster has no circuit breakers")
    # One name for every replica (the headless Service): one endpoint entry is enough here.
    problems = [p for p in broker_replica_problems(cluster) if "endpoint(s)" not in p]
    require(not problems, "; ".join(problems))
    require(cluster["type"] == "STRICT_DNS", "the broker cluster does not resolve every replica (STRICT_DNS)")
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"]
    require(broker["authority"] == address, f"broker.authority {broker['authority']!r} != cluster address {address!r}")
    backends = {b["metadata"]["name"]: b for b in docs_of("Backend")}
    for route in routes.values():
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                require(ref.get("kind") == "Backend" and ref["name"] in backends, f"backendRef {ref} is not a shipped Backend")
    for backend in backends.values():
        tls = backend["spec"].get("tls", {})
        host = backend["spec"]["endpoints"][0]["fqdn"]["hostname"]
        require(tls.get("sni") == host and tls.get("wellKnownCACertificates") == "System", f"Backend {host}: tls {tls}")


# ---- timeouts of the long-query routes ---------------------------------------------

sys.path.insert(0, str(ROOT / "tools"))
import long_routes  # noqa: E402  (tools/long_routes.py: the one list of long-query routes)

# Looker operations that run a query and may take minutes: they must get the long timeout.
LONG_OPERATIONS = {
    "run_inline_query", "run_url_encoded_query", "run_query", "run_look", "create_query_task",
    "query_task_results", "query_task_multi_results", "run_sql_query", "run_sql_interface_query",
    "render_task_results", "create_merge_query", "scheduled_plan_run_once", "scheduled_plan_run_once_by_id",
    "connection_cost_estimate",
}
LONG, SHORT = long_routes.LONG_TIMEOUT_S, long_routes.SHORT_TIMEOUT_S


def operations() -> list[tuple[str, str, str, str]]:
    out = []
    for line in OPERATIONS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        method, path, op, _tags, activity = line.split("\t")[:5]
        sample = re.sub(r"\{result_format\}", "json", path)
        sample = "/api/4.0" + re.sub(r"\{[^}]+\}", "1", sample)
        out.append((method, sample, op, activity))
    return out


def seconds(value) -> int:
    m = re.fullmatch(r"(\d+)s", str(value))
    require(m is not None, f"timeout {value!r} is not in seconds")
    return int(m.group(1))


def production_timeout_of(config: dict):
    """path -> route timeout in envoy/production.yaml: the first route that matches
    (prefix, path, safe_regex on the path without query), as Envoy does."""
    (hcm,) = [
        f["typed_config"]
        for l in config["static_resources"]["listeners"]
        for c in l["filter_chains"]
        for f in c["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"
    ]
    routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]

    def timeout_of(path):
        for r in routes:
            m = r["match"]
            if ("prefix" in m and path.startswith(m["prefix"])) or (
                "safe_regex" in m and re.fullmatch(m["safe_regex"]["regex"], path)
            ) or ("path" in m and path == m["path"]):
                action = r["route"]
                if seconds(action["timeout"]) > seconds(hcm.get("stream_idle_timeout", "300s")):
                    require(seconds(action.get("idle_timeout", "0s")) >= seconds(action["timeout"]), f"{m}: idle cut before the timeout")
                return seconds(action["timeout"])
        return None

    return timeout_of


def istio_timeout_of(vs: dict):
    """path -> timeout of the VirtualService: the first http route with a matching uri
    (prefix, exact, regex: Envoy safe_regex on the path without query), as Istio orders them."""

    def timeout_of(path):
        for http in vs["spec"]["http"]:
            for m in http.get("match", [{}]):
                uri = m.get("uri", {})
                if not uri or ("prefix" in uri and path.startswith(uri["prefix"])) or ("exact" in uri and path == uri["exact"]) or (
                    "regex" in uri and re.fullmatch(uri["regex"], path)
                ):
                    return seconds(http["timeout"])
        return None

    return timeout_of


def envoy_gateway_timeout_of(route: dict):
    """path -> request timeout of the HTTPRoute, matches ordered as Envoy Gateway orders
    them (internal/gatewayapi/sort.go): Exact, then RegularExpression, then PathPrefix
    (whole path elements, Gateway API), longer values first within a type."""
    rank = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}
    matches = sorted(
        ((rank[m["path"]["type"]], -len(m["path"]["value"]), m["path"], rule) for rule in route["spec"]["rules"] for m in rule["matches"]),
        key=lambda x: x[:2],
    )

    def matches_path(p, path):
        if p["type"] == "Exact":
            return path == p["value"]
        if p["type"] == "RegularExpression":
            return re.fullmatch(p["value"], path) is not None
        value = p["value"].rstrip("/")
        return path == value or path.startswith(value + "/")

    def timeout_of(path):
        for _, _, p, rule in matches:
            if matches_path(p, path):
                return seconds(rule["timeouts"]["request"])
        return None

    return timeout_of


def platform_timeouts(prod_config: dict, vs: dict, route: dict) -> dict[str, dict[str, tuple]]:
    """{platform: {"op (path)": (timeout or None, op, activity)}} for every Looker 4.0 operation."""
    platforms = {
        "envoy/production.yaml": production_timeout_of(prod_config),
        "Istio VirtualService": istio_timeout_of(vs),
        "Envoy Gateway HTTPRoute": envoy_gateway_timeout_of(route),
    }
    return {name: {f"{op} ({path})": (fn(path), op, activity) for _, path, op, activity in operations()} for name, fn in platforms.items()}


def timeout_problems(tables) -> list[str]:
    """Every operation routed; query runs long, non-query operations short; and every
    platform giving each operation the same timeout as the first."""
    problems = []
    for platform, table in tables.items():
        for label, (timeout, op, activity) in table.items():
            if timeout is None:
                problems.append(f"{platform}: {label}: no route")
            elif op in LONG_OPERATIONS and timeout < LONG:
                problems.append(f"{platform}: {label}: {timeout}s, needs {LONG}s")
            elif activity != "db_query" and timeout != SHORT:
                problems.append(f"{platform}: {label}, not db_query: {timeout}s, expected {SHORT}s")
    (first, reference), *others = tables.items()
    for platform, table in others:
        for label in reference:
            if table[label][0] != reference[label][0]:
                problems.append(f"{label}: {first} {reference[label][0]}s, {platform} {table[label][0]}s")
    return problems


def shipped_route_sources() -> tuple[dict, dict, dict]:
    (vs,) = docs_of("VirtualService")
    (route,) = docs_of("HTTPRoute")
    return yaml.safe_load(PRODUCTION.read_text()), vs, route


@check("long routes: production.yaml, the Istio VirtualService and the HTTPRoute carry tools/long_routes.py's list")
def long_routes_not_drifted():
    problems = long_routes.drift()
    require(not problems, "\n".join(problems))


@check("every Looker 4.0 operation gets the same timeout on production.yaml, Istio and Envoy Gateway (300s query runs, 30s the rest)")
def same_timeouts_everywhere():
    tables = platform_timeouts(*shipped_route_sources())
    problems = timeout_problems(tables)
    require(not problems, "\n".join(problems[:30]))
    # Controls: one long route fewer on one platform, and a prefix that shadows the
    # regexes in Envoy (first match wins) but not in Envoy Gateway, both fail.
    prod, vs, route = shipped_route_sources()
    vs["spec"]["http"][0]["match"].pop()
    require(timeout_problems(platform_timeouts(prod, vs, route)), "a VirtualService without the last long route passed")
    prod, vs, route = shipped_route_sources()
    hcm = prod["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    routes.insert(0, copy.deepcopy(routes[-1]) | {"match": {"prefix": "/api/4.0/scheduled_plans"}})
    require(timeout_problems(platform_timeouts(prod, vs, route)), "a production route shadowing a long route passed")


@check("production.yaml: TLS to Looker with SNI and CA validation; admin on loopback; broker breakers")
def production_shape():
    config = yaml.safe_load(PRODUCTION.read_text())
    require(config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1", "admin is not bound to 127.0.0.1")
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    plugin = json.loads(plugin_json_of_envoy_config(config)[0])
    looker = clusters["looker"]
    tls = looker["transport_socket"]["typed_config"]
    host = looker["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    require(host["port_value"] == 443, f"Looker port {host['port_value']}")
    require(tls.get("sni") == host["address"], f"sni {tls.get('sni')!r} != {host['address']!r}")
    validation = tls["common_tls_context"]["validation_context"]
    require(validation["trusted_ca"]["filename"].startswith("/etc/"), "no system CA bundle")
    sans = [m["matcher"].get("exact") for m in validation.get("match_typed_subject_alt_names", [])]
    require(host["address"] in sans, f"certificate names not checked against {host['address']}")
    broker = clusters[plugin["broker"]["cluster"]]
    thresholds = broker["circuit_breakers"]["thresholds"][0]
    require(thresholds.get("max_pending_requests") and thresholds.get("max_requests"), "broker circuit breakers")
    require(float(broker["connect_timeout"].rstrip("s")) <= 1, f"broker connect_timeout {broker['connect_timeout']}")
    problems = broker_replica_problems(broker)
    require(not problems, "; ".join(problems))


def broker_replica_problems(cluster: dict) -> list[str]:
    """What a broker cluster lacks to survive a replica dying (docs/fleet.md): several
    endpoints, an active health check on /healthz (not /readyz: readiness is the same on
    every replica), outlier detection that ejects on gateway failures (connect failures),
    and no Envoy retries (the filter retries a token call itself, once)."""
    problems = []
    hosts = [lb for group in cluster["load_assignment"].get("endpoints", []) for lb in group["lb_endpoints"]]
    if len(hosts) < 2:
        problems.append(f"{cluster['name']}: {len(hosts)} endpoint(s), want one per replica (2 or more)")
    checks = cluster.get("health_checks", [])
    if [c.get("http_health_check", {}).get("path") for c in checks] != ["/healthz"]:
        problems.append(f"{cluster['name']}: health checks {checks}, want one HTTP check of /healthz")
    elif not checks[0].get("no_traffic_interval"):
        problems.append(f"{cluster['name']}: no no_traffic_interval (Envoy's default checks an idle cluster every 60s)")
    outlier = cluster.get("outlier_detection", {})
    if not outlier.get("consecutive_gateway_failure") or outlier.get("enforcing_consecutive_gateway_failure") != 100:
        problems.append(f"{cluster['name']}: outlier detection does not eject on consecutive gateway failures: {outlier}")
    thresholds = cluster.get("circuit_breakers", {}).get("thresholds", [{}])
    if any(t.get("max_retries") != 0 for t in thresholds):
        problems.append(f"{cluster['name']}: circuit breakers allow Envoy retries")
    return problems


@check("fleet: envoy-fleet.yaml is the demo's gateway plus a global budget, with two broker replicas (health checks, outlier detection); the replica check refuses one endpoint (control)")
def fleet_broker_replicas():
    config = yaml.safe_load(FLEET.read_text())
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    (plugin,) = [json.loads(text) for text in plugin_json_of_envoy_config(config)]
    # The demo's plugin plus one global budget and the rate limit service, nothing else.
    demo = demo_plugin()
    fleet = copy.deepcopy(plugin)
    service = fleet.pop("rate_limit_service", None)
    require(service and service["cluster"] in clusters, f"rate_limit_service {service} names no cluster")
    # One rule's budget is global (in place of the demo's local one); every other is the demo's.
    global_rules = [r["name"] for r in fleet["policy"]["rules"] if r.get("rate_limit", {}).get("scope") == "global"]
    require(len(global_rules) == 1, f"the fleet's global budgets: {global_rules}")
    for doc in (fleet, demo):
        for rule in doc["policy"]["rules"]:
            if rule["name"] == global_rules[0]:
                rule.pop("rate_limit", None)
    require(fleet == demo, "the fleet's plugin JSON is not the demo's with one budget made global")
    broker = clusters[plugin["broker"]["cluster"]]
    problems = broker_replica_problems(broker)
    require(not problems, "; ".join(problems))
    ports = sorted(lb["endpoint"]["address"]["socket_address"]["port_value"] for lb in broker["load_assignment"]["endpoints"][0]["lb_endpoints"])
    require(ports == [10190, 10191], f"broker ports {ports}")
    single = copy.deepcopy(broker)
    single["load_assignment"]["endpoints"][0]["lb_endpoints"].pop()
    require(broker_replica_problems(single), "a broker cluster with one endpoint passed")


@check("access logs: production and compose configs log every lookergate_* field demo.yaml logs")
def access_log_fields():
    def fields(path):
        out = set()

        def walk(node):
            if isinstance(node, dict):
                if "json_format" in node:
                    out.update(node["json_format"])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(yaml.safe_load(path.read_text()))
        return out

    wanted = {f for f in fields(DEMO) if f.startswith("lookergate_")}
    require(wanted, "demo.yaml logs no lookergate_* field")
    for path in (PRODUCTION, COMPOSE_ENVOY):
        missing = wanted - fields(path)
        require(not missing, f"{rel(path)} does not log {sorted(missing)}")


# ---- clients are external (use_remote_address) -------------------------------------

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# Configs that document a load balancer in front of Envoy, and how many X-Forwarded-For
# hops it appends; every other config trusts none.
TRUSTED_HOPS = {PRODUCTION: 1}


def remote_address_problems(node, label: str, trusted_hops: int) -> tuple[int, list[str]]:
    """(HCMs found, problems): every HttpConnectionManager, and any mapping that sets
    use_remote_address (an EnvoyFilter or patch), must make Envoy treat clients as
    external: use_remote_address true, no internal_address_config (an internal peer's
    x-envoy-* headers are obeyed), no original IP detection extension, and at most
    `trusted_hops` trusted X-Forwarded-For hops."""
    found, problems = 0, []

    def walk(node, path):
        nonlocal found
        if isinstance(node, dict):
            is_hcm = str(node.get("@type", "")).endswith(HCM_TYPE)
            if is_hcm or "use_remote_address" in node:
                found += is_hcm
                where = f"{label} {path or '/'}"
                if node.get("use_remote_address") is not True:
                    problems.append(f"{where}: use_remote_address is {node.get('use_remote_address')!r}, must be true")
                hops = node.get("xff_num_trusted_hops", 0)
                if hops != trusted_hops:
                    problems.append(f"{where}: xff_num_trusted_hops {hops}, expected {trusted_hops}")
                for key in ("internal_address_config", "original_ip_detection_extensions"):
                    if key in node:
                        problems.append(f"{where}: sets {key}")
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(node, "")
    # The filter keeps the same number of client-side X-Forwarded-For hops.
    for plugin in plugin_json_of_envoy_config(node) if isinstance(node, dict) else []:
        hops = json.loads(plugin).get("xff_num_trusted_hops", 0)
        if hops != trusted_hops:
            problems.append(f"{label}: the lookergate plugin's xff_num_trusted_hops is {hops}, the connection manager's {trusted_hops}")
    return found, problems


@check("every shipped HTTP connection manager treats clients as external (use_remote_address: true)")
def clients_are_external():
    problems = []
    for path in envoy_configs():
        found, mine = remote_address_problems(yaml.safe_load(path.read_text()), rel(path), TRUSTED_HOPS.get(path, 0))
        require(found, f"{rel(path)}: no HttpConnectionManager found (is the @type spelled differently?)")
        problems.extend(mine)
    for path, doc in manifests():
        problems.extend(remote_address_problems(doc, f"{rel(path)} {doc.get('kind')}", 0)[1])
    require(not problems, "\n".join(problems))


@check("the use_remote_address check refuses a config without it (control)")
def clients_are_external_control():
    demo = yaml.safe_load(DEMO.read_text())
    found, problems = remote_address_problems(demo, "demo.yaml", 0)
    require(found and not problems, f"demo.yaml: {found} HCMs, {problems}")
    for edit in (
        lambda hcm: hcm.pop("use_remote_address"),
        lambda hcm: hcm.update(xff_num_trusted_hops=1),
        lambda hcm: hcm.update(internal_address_config={"cidr_ranges": []}),
    ):
        broken = copy.deepcopy(demo)
        edit(broken["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"])
        require(remote_address_problems(broken, "demo.yaml", 0)[1], "a broken HCM passed the check")


@check("Envoy Gateway: a ClientTrafficPolicy keeps clients external on the Gateway the routes use")
def envoy_gateway_client_ip():
    gateways = {ref["name"] for r in docs_of("HTTPRoute") for ref in r["spec"]["parentRefs"]}
    covered = set()
    for policy in docs_of("ClientTrafficPolicy"):
        detection = policy["spec"].get("clientIPDetection") or {}
        # customHeader makes Envoy Gateway build the listener with use_remote_address: false.
        require("customHeader" not in detection, f"{policy['metadata']['name']}: clientIPDetection.customHeader")
        hops = (detection.get("xForwardedFor") or {}).get("numTrustedHops")
        require(hops == 0, f"{policy['metadata']['name']}: xForwardedFor.numTrustedHops is {hops!r}, expected 0")
        covered |= {ref["name"] for ref in policy["spec"]["targetRefs"] if ref["kind"] == "Gateway"}
    require(gateways and gateways <= covered, f"Gateways {sorted(gateways - covered)} have no ClientTrafficPolicy")


# ---- the mesh: the filter on the gateway the routes use, with body access -----------

DEPLOY_DOC = ROOT / "docs/deploy.md"
DECISION_RS = ROOT / "src/decision/mod.rs"


def helm_gateway_labels(doc_text: str) -> tuple[str, dict[str, str]]:
    """(namespace, pod labels) of the ingress gateway docs/deploy.md installs with Istio's
    Helm gateway chart. The chart labels its pods app: <name>, istio: <name without
    "istio-">, where <name> is the release name unless values override it
    (istio/istio manifests/charts/gateway/templates/_helpers.tpl, gateway.selectorLabels)."""
    installs = re.findall(r"^\s*helm install (\S+) istio/gateway\b([^\n]*)$", doc_text, re.M)
    require(len(installs) == 1, f"docs/deploy.md: expected one `helm install <release> istio/gateway`, found {len(installs)}")
    release, args = installs[0]
    m = re.search(r"(?:-n|--namespace)[ =](\S+)", args)
    require(m is not None, "docs/deploy.md: the gateway's helm install names no namespace (-n)")
    require("--set name" not in args and "labels." not in args, "the helm install overrides the chart's name or labels: teach helm_gateway_labels")
    return m.group(1), {"app": release, "istio": release.removeprefix("istio-")}


def istio_selector_problems(manifest_docs: list[dict], namespace: str, labels: dict[str, str]) -> list[str]:
    problems = []
    for doc in manifest_docs:
        kind, meta = doc.get("kind"), doc.get("metadata", {})
        if kind == "EnvoyFilter":
            selector = doc["spec"].get("workloadSelector", {}).get("labels")
        elif kind == "Gateway" and doc.get("apiVersion", "").startswith("networking.istio.io/"):
            selector = doc["spec"].get("selector")
        else:
            continue
        where = f"{kind}/{meta.get('name')}"
        if meta.get("namespace") != namespace:
            problems.append(f"{where}: namespace {meta.get('namespace')!r}, the gateway runs in {namespace!r}")
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{where}: selector {selector} does not select the chart's pods {labels}")
    return problems


@check("Istio: the EnvoyFilter and the Gateway select the pods of the documented Helm gateway install")
def istio_selectors_match_helm_chart():
    namespace, labels = helm_gateway_labels(DEPLOY_DOC.read_text())
    istio_docs = [d for p, d in manifests() if p.parent == ISTIO_DIR]
    require(any(d["kind"] == "EnvoyFilter" for d in istio_docs) and any(d["kind"] == "Gateway" for d in istio_docs), "no EnvoyFilter or Gateway")
    problems = istio_selector_problems(istio_docs, namespace, labels)
    require(not problems, "\n".join(problems))
    # Control: the selector of the old manifests (istio: ingressgateway) is refused.
    planted = copy.deepcopy(istio_docs)
    for doc in planted:
        if doc["kind"] == "EnvoyFilter":
            doc["spec"]["workloadSelector"]["labels"] = {"istio": "ingressgateway"}
    require(istio_selector_problems(planted, namespace, labels), "the selector check accepted istio: ingressgateway")


def looker_exposure_problems(manifest_docs: list[dict], gateway_namespace: str, marker: str) -> list[str]:
    """Looker reachable only from the gateway namespace, and that namespace refusing any
    request that does not carry the filter's marker."""
    problems = []
    destinations = {r["destination"]["host"] for d in manifest_docs if d["kind"] == "VirtualService" for h in d["spec"]["http"] for r in h["route"]}
    if not destinations:
        problems.append("no VirtualService routes to Looker")
    for doc in manifest_docs:
        spec, where = doc["spec"], f"{doc['kind']}/{doc['metadata']['name']}"
        hosts = spec.get("hosts", []) if doc["kind"] != "DestinationRule" else [spec.get("host")]
        if doc["kind"] in ("ServiceEntry", "DestinationRule", "VirtualService") and (set(hosts) & destinations or doc["kind"] == "VirtualService"):
            if doc["metadata"]["namespace"] != gateway_namespace:
                problems.append(f"{where}: in {doc['metadata']['namespace']}, not the gateway's namespace")
            if spec.get("exportTo") not in (["."], [gateway_namespace]):
                problems.append(f"{where}: exportTo {spec.get('exportTo')}, must be only the gateway's namespace")
    guards = [
        d for d in manifest_docs
        if d["kind"] == "AuthorizationPolicy" and d["metadata"]["namespace"] == gateway_namespace
        and d["spec"].get("action") == "DENY" and "selector" not in d["spec"] and "targetRefs" not in d["spec"]
        and any(
            set(rule) == {"when"} and rule["when"] == [{"key": "request.headers[authorization]", "notValues": [marker + "*"]}]
            for rule in d["spec"].get("rules", [])
        )
    ]
    if not guards:
        problems.append(
            f"no namespace-wide DENY AuthorizationPolicy in {gateway_namespace} for requests whose authorization "
            f"is not {marker!r}...: a gateway pod without the filter would forward clients' requests"
        )
    return problems


@check("Istio: Looker is exported only to the gateway namespace, which refuses requests the filter did not pass")
def istio_looker_unreachable_without_filter():
    namespace, _ = helm_gateway_labels(DEPLOY_DOC.read_text())
    # The marker: what the filter sets on every request it forwards (src/decision/mod.rs).
    source = DECISION_RS.read_text()
    body = source[source.index("pub fn with_looker_token"):]
    body = body[: body.index("\n}\n")]
    m = re.search(r'push_str\("([^"]+)"\)', body)
    require(m is not None and "\"authorization\"" in body, "src/decision/mod.rs with_looker_token: cannot find the authorization value it sets")
    marker = m.group(1)
    istio_docs = [d for p, d in manifests() if p.parent == ISTIO_DIR]
    problems = looker_exposure_problems(istio_docs, namespace, marker)
    require(not problems, "\n".join(problems))
    for plant in (
        lambda docs: next(d for d in docs if d["kind"] == "ServiceEntry" and "exportTo" in d["spec"])["spec"].pop("exportTo"),
        lambda docs: [docs.remove(d) for d in list(docs) if d["kind"] == "AuthorizationPolicy"],
    ):
        planted = copy.deepcopy(istio_docs)
        plant(planted)
        require(looker_exposure_problems(planted, namespace, marker), "a planted exposure passed the check")


def eg_route_listeners() -> list[tuple[dict, dict]]:
    """(Gateway, Gateway listener) for every parentRef of the shipped HTTPRoutes: each must
    name a shipped Gateway API Gateway in the route's namespace and one of its listeners
    by sectionName (without it a route attaches to every listener of the Gateway)."""
    gateways = {(g["metadata"]["namespace"], g["metadata"]["name"]): g for g in docs_of("Gateway") if g["apiVersion"].startswith("gateway.networking.k8s.io/")}
    out = []
    for route in docs_of("HTTPRoute"):
        where = f"HTTPRoute/{route['metadata']['name']}"
        for ref in route["spec"]["parentRefs"]:
            require(ref.get("kind", "Gateway") == "Gateway" and ref.get("group", "gateway.networking.k8s.io") == "gateway.networking.k8s.io", f"{where}: parentRef {ref} is not a Gateway")
            key = (ref.get("namespace", route["metadata"]["namespace"]), ref["name"])
            require(key in gateways, f"{where}: parentRef {ref} names no shipped Gateway ({sorted(gateways)})")
            require(ref.get("sectionName"), f"{where}: parentRef {ref} has no sectionName")
            listeners = {l["name"]: l for l in gateways[key]["spec"]["listeners"]}
            require(ref["sectionName"] in listeners, f"{where}: sectionName {ref['sectionName']!r} is none of {sorted(listeners)}")
            out.append((gateways[key], listeners[ref["sectionName"]]))
    require(out, "no HTTPRoute attaches to a Gateway")
    return out


def eg_xds_listener_names(gateway: dict, listener: dict) -> tuple[str, str]:
    """The xDS listener Envoy Gateway generates for a Gateway listener: (default name,
    name with the XDSNameSchemeV2 runtime flag). internal/gatewayapi/helpers.go
    irListenerName, internal/xds/translator/listener.go xdsListenerName (v2: protocol and
    the Gateway listener's port); testdata/out/xds-ir/gateway-tls-frontend.listeners.yaml
    and xds-name-scheme-v2.listeners.yaml."""
    meta = gateway["metadata"]
    return f"{meta['namespace']}/{meta['name']}/{listener['name']}", f"tcp-{listener['port']}"


@check("Envoy Gateway: the HTTPRoute attaches by sectionName to an HTTPS listener that terminates TLS with a Secret")
def envoy_gateway_https_listener():
    for gateway, listener in eg_route_listeners():
        where = f"Gateway/{gateway['metadata']['name']} listener {listener['name']}"
        require(listener["protocol"] == "HTTPS" and listener["port"] == 443, f"{where}: {listener['protocol']} on {listener['port']}, expected HTTPS on 443")
        tls = listener.get("tls") or {}
        refs = tls.get("certificateRefs") or []
        require(tls.get("mode", "Terminate") == "Terminate" and refs, f"{where}: tls {tls}")
        for ref in refs:
            require(ref.get("kind", "Secret") == "Secret" and ref.get("group", "") == "" and "namespace" not in ref, f"{where}: certificateRef {ref} is not a Secret in the Gateway's namespace")
        # Only HTTPS listener on its port: listeners sharing a port share one xDS listener,
        # named after the first, which the body-access patch would then have to name.
        same_port = [l["name"] for l in gateway["spec"]["listeners"] if l["port"] == listener["port"]]
        require(same_port == [listener["name"]], f"{where}: listeners {same_port} share port {listener['port']}")
        for route in docs_of("HTTPRoute"):
            hosts = set(route["spec"].get("hostnames", []))
            require(listener.get("hostname") in hosts | {None}, f"{where}: hostname {listener.get('hostname')} serves none of {sorted(hosts)}")
        classes = {c["metadata"]["name"]: c for c in docs_of("GatewayClass")}
        gateway_class = classes.get(gateway["spec"]["gatewayClassName"])
        require(gateway_class and gateway_class["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller",
                f"{where}: GatewayClass {gateway['spec']['gatewayClassName']!r} is not a shipped Envoy Gateway class")
        # mergeGateways (an EnvoyProxy parametersRef) changes listener names.
        require("parametersRef" not in gateway_class["spec"], "the GatewayClass has a parametersRef: listener names may differ (mergeGateways)")
        for policy in docs_of("EnvoyPatchPolicy") + docs_of("ClientTrafficPolicy"):
            refs_of = policy["spec"].get("targetRefs") or [policy["spec"]["targetRef"]]
            for target in refs_of:
                require(target["kind"] == "Gateway" and target["name"] == gateway["metadata"]["name"] and policy["metadata"]["namespace"] == gateway["metadata"]["namespace"],
                        f"{policy['kind']}/{policy['metadata']['name']} targets {target}, not the route's Gateway {gateway['metadata']['name']}")
        secret = refs[0]["name"]
        for path in (EG_DIR / "gateway.yaml", DEPLOY_DOC):
            require(f"kubectl create secret tls {secret} -n {gateway['metadata']['namespace']}" in path.read_text(), f"{rel(path)} does not say how to create the Secret {secret}")


def eg_body_access_problems(extension_policy: dict, patch_policies: list[dict], route_listeners: list[tuple[dict, dict]]) -> list[str]:
    meta = extension_policy["metadata"]
    generated = f"envoy.filters.http.wasm/envoyextensionpolicy/{meta['namespace']}/{meta['name']}/wasm/0"
    wanted = {eg_xds_listener_names(g, l)[0]: g["metadata"]["name"] for g, l in route_listeners}
    patched, problems = set(), []
    for epp in patch_policies:
        for patch in epp["spec"]["jsonPatches"]:
            if not patch["type"].endswith("envoy.config.listener.v3.Listener"):
                continue
            op, where = patch["operation"], f"EnvoyPatchPolicy/{epp['metadata']['name']} listener {patch['name']}"
            if patch["name"] not in wanted:
                problems.append(f"{where}: not the listener Envoy Gateway generates for the routes' Gateway listener {sorted(wanted)}")
            elif epp["spec"]["targetRef"]["name"] != wanted[patch["name"]]:
                problems.append(f"{where}: the policy targets Gateway {epp['spec']['targetRef']['name']}, the listener is {wanted[patch['name']]}'s")
            if not (op["op"] == "add" and op.get("path") == "/allow_on_headers_stop_iteration" and op.get("value") is True):
                problems.append(f"{where}: operation {op}")
            elif f"[?(@.name=='{generated}')].typed_config.config" not in op.get("jsonPath", ""):
                problems.append(f"{where}: jsonPath {op.get('jsonPath')!r} does not select {generated}")
            else:
                patched.add(patch["name"])
    if set(wanted) - patched:
        problems.append(f"no EnvoyPatchPolicy gives the filter body access on {sorted(set(wanted) - patched)}: query guardrails would time out")
    return problems


@check("Envoy Gateway: the body-access EnvoyPatchPolicy names the xDS listener and Wasm filter Envoy Gateway generates")
def envoy_gateway_body_access_patch():
    (policy,) = docs_of("EnvoyExtensionPolicy")
    require(len(policy["spec"]["wasm"]) == 1, "one Wasm entry expected (the patch names wasm/0)")
    route_listeners = eg_route_listeners()
    problems = eg_body_access_problems(policy, docs_of("EnvoyPatchPolicy"), route_listeners)
    require(not problems, "\n".join(problems))
    # The listener name of the other naming scheme is documented beside the patch.
    text = (EG_DIR / "extension-policy.yaml").read_text()
    for gateway, listener in route_listeners:
        default, v2 = eg_xds_listener_names(gateway, listener)
        require(f"name: {default}" in text and v2 in text and "XDSNameSchemeV2" in text, f"extension-policy.yaml: the patch does not name {default} and document {v2} (XDSNameSchemeV2)")
    # Controls: the placeholder listener of the previous manifests, and the V2 name, fail.
    for name in ("lookergate/eg/https", eg_xds_listener_names(*route_listeners[0])[1]):
        planted = copy.deepcopy(docs_of("EnvoyPatchPolicy"))
        for epp in planted:
            for patch in epp["spec"]["jsonPatches"]:
                if patch["type"].endswith("envoy.config.listener.v3.Listener"):
                    patch["name"] = name
        require(eg_body_access_problems(policy, planted, route_listeners), f"a body-access patch on listener {name} passed the check")


@check("Istio and Envoy Gateway patches in Envoy: guarded query 200 patched, 408 unpatched, 403 without the filter")
def mesh_patches_in_envoy():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import mesh_patch_check

    lines: list[str] = []
    try:
        failures = mesh_patch_check.run(log=lines.append)
    except mesh_patch_check.Failed as e:
        failures = [str(e)]
    require(not failures, "\n".join(lines + failures))


# ---- stats tags --------------------------------------------------------------------

import stats_tags  # noqa: E402  (tools/stats_tags.py: envoy/stats-tags.yaml into every config)

STATS_CONFIG = yaml.safe_load(stats_tags.fragment())["stats_config"]


def stats_config_problems(config: dict, label: str) -> list[str]:
    """What keeps `config` from carrying exactly envoy/stats-tags.yaml's stats_config."""
    actual = config.get("stats_config")
    if actual is None:
        return [f"{label}: no stats_config (the lookergate stats tags of envoy/stats-tags.yaml)"]
    want = {(t["tag_name"], t["regex"]) for t in STATS_CONFIG["stats_tags"]}
    have = {(t.get("tag_name"), t.get("regex")) for t in actual.get("stats_tags", [])}
    problems = [f"{label}: missing stats tag {name} {regex!r}" for name, regex in sorted(want - have)]
    problems += [f"{label}: stats tag {name} {regex!r} is not in envoy/stats-tags.yaml" for name, regex in sorted(have - want)]
    if actual != STATS_CONFIG and not problems:
        problems.append(f"{label}: stats_config differs from envoy/stats-tags.yaml")
    return problems


@check("stats tags: every shipped Envoy config carries envoy/stats-tags.yaml's stats_config (tools/stats_tags.py, no drift)")
def stats_tags_everywhere():
    problems = stats_tags.drift()
    for path in envoy_configs():
        problems += stats_config_problems(yaml.safe_load(path.read_text()), rel(path))
    require(not problems, "\n".join(problems))


@check("stats tags: a config that lacks one is refused (control)")
def stats_tags_control():
    config = yaml.safe_load(DEMO.read_text())
    config["stats_config"]["stats_tags"].pop()
    require(stats_config_problems(config, "demo.yaml less one tag"), "a config missing a stats tag passed the check")


@check("stats tags: the Istio bootstrap override and the Envoy Gateway EnvoyProxy carry the same list")
def stats_tags_for_platforms():
    config_map = yaml.safe_load(stats_tags.istio_config_map("istio-ingress"))
    require(config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == stats_tags.RESOURCE_NAME, f"{config_map}")
    problems = stats_config_problems(yaml.safe_load(config_map["data"]["custom_bootstrap.json"]), "Istio ConfigMap custom_bootstrap.json")
    proxy = yaml.safe_load(stats_tags.envoy_gateway_proxy("lookergate"))
    require(proxy["kind"] == "EnvoyProxy" and proxy["spec"]["bootstrap"]["type"] == "Merge", f"{proxy}")
    problems += stats_config_problems(yaml.safe_load(proxy["spec"]["bootstrap"]["value"]), "EnvoyProxy spec.bootstrap.value")
    (shipped,) = [d for d in load_yaml_documents(EG_DIR / "gateway.yaml") if d.get("kind") == "EnvoyProxy"]
    if shipped["spec"].get("bootstrap") != proxy["spec"]["bootstrap"]:
        problems.append("envoy/envoy-gateway/gateway.yaml EnvoyProxy: spec.bootstrap differs from `tools/stats_tags.py --envoy-gateway`")
    require(not problems, "\n".join(problems))


# ---- runner ------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-compose", action="store_true", help="regenerate envoy/compose.yaml from envoy/demo.yaml")
    parser.add_argument("-k", metavar="SUBSTRING", help="run only checks whose name contains this")
    args = parser.parse_args()
    if args.write_compose:
        text = compose_text()
        if compose_transform(yaml.safe_load(DEMO.read_text())) != yaml.safe_load(text):
            print("cannot derive envoy/compose.yaml from envoy/demo.yaml by text: update compose_text()", file=sys.stderr)
            return 1
        COMPOSE_ENVOY.write_text(text)
        print(f"wrote {rel(COMPOSE_ENVOY)}")
        return 0
    started = time.monotonic()
    passed = failed = 0
    for name, fn in CHECKS:
        if args.k and args.k not in name:
            continue
        try:
            fn()
        except CheckFailed as e:
            failed += 1
            print(f"FAILED {name}\n  " + str(e).replace("\n", "\n  "))
        except Exception:  # a crash in a check is a failure of that check, not of the run
            failed += 1
            print(f"FAILED {name}\n  " + traceback.format_exc().replace("\n", "\n  "))
        else:
            passed += 1
            print(f"PASSED {name}")
    print(f"{passed} passed, {failed} failed in {time.monotonic() - started:.1f}s")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
