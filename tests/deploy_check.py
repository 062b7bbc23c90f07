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
  checked against the repository (build contexts, COPY sources, packages, binaries).
- Kubernetes manifests (envoy/istio, envoy/envoy-gateway) parse, have the expected
  apiVersion/kind, and use only field names of those APIs; cross references (plugin
  broker cluster, hosts, targetRefs) line up.
- The long-query routes of production.yaml, the Istio VirtualService and the
  HTTPRoute give Looker's query-running operations 300s and everything else 30s.
- Every shipped HTTP connection manager (and anything in a manifest that sets one) has
  `use_remote_address: true`, no `internal_address_config` and no trusted
  X-Forwarded-For hop unless the config documents a load balancer in front; Envoy
  Gateway's ClientTrafficPolicy keeps that so (no customHeader, 0 hops).

Needs PyYAML. Prints one line per check and `N passed, M failed`; exits 1 on failure.
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
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVOY = Path(os.environ.get("LOOKERGATE_ENVOY", ROOT / ".venv/bin/envoy"))
WASM_DIR = ROOT / "target/wasm32-wasip1/release"
DEMO = ROOT / "envoy/demo.yaml"
COMPOSE_ENVOY = ROOT / "envoy/compose.yaml"
PRODUCTION = ROOT / "envoy/production.yaml"
DOCKER_COMPOSE = ROOT / "envoy/docker-compose.yaml"
ISTIO_DIR = ROOT / "envoy/istio"
EG_DIR = ROOT / "envoy/envoy-gateway"
OPERATIONS = ROOT / "looker-sim/operations.tsv"

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
    for path in sorted((ROOT / "envoy").glob("*.yaml")) + sorted((ROOT / "bench").rglob("*.y*ml")):
        if path in found or any(p in ("out", "work", "target") for p in path.parts):
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


def envoy_validate(text: str, label: str) -> tuple[bool, str]:
    require(ENVOY.exists(), f"{rel(ENVOY)} is missing (run `make envoy`)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "envoy.yaml"
        path.write_text(localize_wasm_paths(text))
        proc = subprocess.run(
            [str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
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
    return yaml.safe_dump(config, sort_keys=False)


@check("envoy --mode validate refuses a plugin config the filter refuses (control)")
def validate_refuses_bad_plugin():
    demo_plugin = plugin_json_of_envoy_config(yaml.safe_load(DEMO.read_text()))[0]
    bad = json.loads(demo_plugin)
    bad["version"] = 99
    ok, log = envoy_validate(demo_with_plugin(json.dumps(bad, indent=2)), "demo.yaml with version 99")
    require(not ok, "Envoy accepted a plugin config with an unknown version: validation proves nothing\n" + log)
    require("unsupported configuration version" in log, "expected the filter's own error in Envoy's log\n" + log)


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
    mine, theirs = key_paths(plugin), key_paths(demo)
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


def manifest_plugins() -> list[tuple[str, dict]]:
    """(label, plugin config) from the WasmPlugin and EnvoyExtensionPolicy manifests."""
    found = []
    for path in sorted(ISTIO_DIR.glob("*.yaml")) + sorted(EG_DIR.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            if doc.get("kind") == "WasmPlugin":
                found.append((f"{rel(path)} WasmPlugin.spec.pluginConfig", doc["spec"].get("pluginConfig")))
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
    if _path != DEMO:
        check(f"plugin JSON of {rel(_path)} has the demo's keys")(lambda p=_path: check_envoy_config_plugins(p))


@check("every Envoy config runs the filter FAIL_CLOSED")
def every_filter_fails_closed():
    for path in envoy_configs():
        for wasm in wasm_filters(yaml.safe_load(path.read_text())):
            require(wasm.get("failure_policy") == "FAIL_CLOSED", f"{rel(path)}: failure_policy is {wasm.get('failure_policy')!r}")


@check("manifest plugin configs have the demo's keys and the filter accepts them")
def manifest_plugin_configs():
    found = manifest_plugins()
    require(len(found) >= 2, f"expected a WasmPlugin and an EnvoyExtensionPolicy, found {[l for l, _ in found]}")
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
        require(name in COMPOSE_UPSTREAMS, f"demo.yaml cluster {name!r} has no compose service (COMPOSE_UPSTREAMS)")
        cluster["type"] = "STRICT_DNS"
        for group in cluster["load_assignment"]["endpoints"]:
            for lb in group["lb_endpoints"]:
                lb["endpoint"]["address"]["socket_address"]["address"] = COMPOSE_UPSTREAMS[name]
    return out


COMPOSE_HEADER = """\
# GENERATED from envoy/demo.yaml by `python3 tests/deploy_check.py --write-compose`;
# `make deploy-check` fails when the two differ. Do not edit: change demo.yaml instead.
# envoy/docker-compose.yaml mounts this as /etc/envoy/envoy.yaml: the demo config with the
# compose services as upstreams (STRICT_DNS), listeners on 0.0.0.0 inside the container
# (published on the host's loopback only) and the filter mounted at {wasm}.
""".format(wasm=CONTAINER_WASM)


def compose_text() -> str:
    text = DEMO.read_text()
    body = text[re.search(r"^[a-z]", text, re.M).start():]  # drop the demo's header comment
    body = re.sub(r"(socket_address: \{ address: )127\.0\.0\.1(, port_value: (?:9901|10000) \})", r"\g<1>0.0.0.0\g<2>", body)
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
    image = envoy.get("image", "")
    version = makefile_envoy_version()
    require(
        image in (f"envoyproxy/envoy:v{version}", f"envoyproxy/envoy:distroless-v{version}"),
        f"envoy image {image!r} is not the pinned release v{version}",
    )
    mounts = {}
    for volume in envoy.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = (base / source).resolve()
    command = envoy.get("command", [])
    config_target = command[command.index("-c") + 1]
    require(mounts.get(config_target) == COMPOSE_ENVOY, f"{config_target} is not envoy/compose.yaml but {mounts.get(config_target)}")
    require(mounts.get(CONTAINER_WASM) == (WASM_DIR / "lookergate.wasm"), f"{CONTAINER_WASM} is not mounted from the wasm build")
    # Upstream clusters in compose.yaml reach the services on the ports they listen on.
    config = yaml.safe_load(COMPOSE_ENVOY.read_text())
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
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


def check_rust_dockerfile(path: Path, package: str):
    instructions = dockerfile_instructions(path)
    stages, copied = [], set()
    ignored = dockerignore_patterns()
    for word, rest in instructions:
        require(
            word in {"FROM", "COPY", "ADD", "RUN", "ENTRYPOINT", "CMD", "USER", "EXPOSE", "WORKDIR", "ENV", "ARG", "LABEL"},
            f"{rel(path)}: unexpected instruction {word}",
        )
        if word == "FROM":
            parts = rest.split()
            image = parts[0]
            require(":" in image and not image.endswith(":latest"), f"{rel(path)}: base image {image} is not pinned")
            stages.append(parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None)
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
            m = re.search(r"-p\s+(\S+)", rest)
            require(m and m.group(1) == package, f"{rel(path)}: builds {m and m.group(1)}, expected {package}")
            require("--release" in rest and "--locked" in rest, f"{rel(path)}: cargo build without --release --locked")
            members, bins = workspace()
            for binary in bins[package]:
                require(f"target/release/{binary}" in rest, f"{rel(path)}: does not take target/release/{binary}")
            missing = [m for m in members if m != "." and m not in copied]
            require(not missing, f"{rel(path)}: workspace members not copied before the build: {missing}")
            require({"Cargo.toml", "Cargo.lock", "src"} <= copied, f"{rel(path)}: root manifest, lock or src not copied")
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]
    words = [w for w, _ in final]
    require("ENTRYPOINT" in words, f"{rel(path)}: final stage has no ENTRYPOINT")
    users = [r for w, r in final if w == "USER"]
    require(users and not users[-1].startswith(("root", "0")), f"{rel(path)}: final stage runs as root")
    entry = json.loads(next(r for w, r in final if w == "ENTRYPOINT"))
    _, bins = workspace()
    require(Path(entry[0]).name in bins[package], f"{rel(path)}: ENTRYPOINT {entry} is not a binary of {package}")


check("broker/Dockerfile: sources exist, builds lookergate-broker")(
    lambda: check_rust_dockerfile(ROOT / "broker/Dockerfile", "lookergate-broker")
)
check("looker-sim/Dockerfile: sources exist, builds lookergate-looker-sim")(
    lambda: check_rust_dockerfile(ROOT / "looker-sim/Dockerfile", "lookergate-looker-sim")
)
check("cli/Dockerfile: sources exist, builds lookergate-cli (the dev IdP)")(
    lambda: check_rust_dockerfile(ROOT / "cli/Dockerfile", "lookergate-cli")
)


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
    for path in sorted(ISTIO_DIR.glob("*.yaml")) + sorted(EG_DIR.glob("*.yaml")):
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
        if key not in SCHEMAS:
            problems.append(f"{label}: unexpected apiVersion/kind {key}")
            continue
        require(set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"{label}: top-level keys {sorted(doc)}")
        meta = doc.get("metadata", {})
        if not meta.get("name") or not meta.get("namespace"):
            problems.append(f"{label}: metadata needs name and namespace")
        problems.extend(f"{label}: unknown field {u}" for u in unknown_fields(doc.get("spec"), SCHEMAS[key], "spec"))
    require(not problems, "\n".join(problems))


def docs_of(kind: str) -> list[dict]:
    return [d for _, d in manifests() if d.get("kind") == kind]


def istio_cluster(host: str, port: int) -> str:
    return f"outbound|{port}||{host}"


@check("Istio: WasmPlugin (oci://, AUTHN, FAIL_CLOSE) calls the broker's ServiceEntry cluster")
def istio_manifests():
    (plugin,) = docs_of("WasmPlugin")
    spec = plugin["spec"]
    require(spec["url"].startswith("oci://"), f"url {spec['url']}")
    require(spec.get("phase") == "AUTHN", f"phase {spec.get('phase')}")
    require(spec.get("failStrategy") == "FAIL_CLOSE", f"failStrategy {spec.get('failStrategy')}")
    broker = spec["pluginConfig"]["broker"]
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

# Looker operations that run a query and may take minutes: they must get the long timeout.
LONG_OPERATIONS = {
    "run_inline_query", "run_url_encoded_query", "run_query", "run_look", "create_query_task",
    "query_task_results", "query_task_multi_results", "run_sql_query", "run_sql_interface_query",
    "render_task_results", "create_merge_query",
}
LONG, SHORT = 300, 30


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


def check_timeouts(label: str, timeout_of):
    problems = []
    for method, path, op, activity in operations():
        timeout = timeout_of(path)
        if timeout is None:
            problems.append(f"{op} ({path}): no route")
        elif op in LONG_OPERATIONS and timeout < LONG:
            problems.append(f"{op} ({path}): {timeout}s, needs {LONG}s")
        elif activity != "db_query" and timeout != SHORT:
            problems.append(f"{op} ({path}, not db_query): {timeout}s, expected {SHORT}s")
    require(not problems, f"{label}:\n" + "\n".join(problems[:20]))


@check("production.yaml: db_query operations get 300s, the rest 30s")
def production_timeouts():
    config = yaml.safe_load(PRODUCTION.read_text())
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

    check_timeouts("envoy/production.yaml", timeout_of)


@check("Istio VirtualService and Envoy Gateway HTTPRoute: the same timeout split")
def manifest_timeouts():
    (vs,) = docs_of("VirtualService")

    def vs_timeout(path):
        for http in vs["spec"]["http"]:
            for m in http.get("match", [{}]):
                uri = m.get("uri", {})
                if ("prefix" in uri and path.startswith(uri["prefix"])) or ("regex" in uri and re.fullmatch(uri["regex"], path)):
                    return seconds(http["timeout"])
        return None

    check_timeouts("envoy/istio VirtualService", vs_timeout)
    (route,) = docs_of("HTTPRoute")

    def prefix_match(value, path):  # Gateway API PathPrefix: whole path elements
        value = value.rstrip("/")
        return path == value or path.startswith(value + "/")

    def best_rule(path):
        # Gateway API: the longest matching prefix wins, regexes by order after exact/prefix.
        best, best_len = None, -1
        for rule in route["spec"]["rules"]:
            for m in rule["matches"]:
                p = m["path"]
                if p["type"] == "PathPrefix" and prefix_match(p["value"], path) and len(p["value"]) > best_len:
                    best, best_len = rule, len(p["value"])
        if best is None or best_len < len("/api/4.0/"):
            for rule in route["spec"]["rules"]:
                for m in rule["matches"]:
                    p = m["path"]
                    if p["type"] == "RegularExpression" and re.fullmatch(p["value"], path):
                        return rule
        return best

    def route_timeout(path):
        rule = best_rule(path)
        return None if rule is None else seconds(rule["timeouts"]["request"])

    check_timeouts("envoy/envoy-gateway HTTPRoute", route_timeout)


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
    require(plugin["broker"]["authority"] == broker["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"],
            "broker.authority is not the broker host")


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
