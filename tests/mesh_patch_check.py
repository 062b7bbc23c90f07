#!/usr/bin/env python3
"""Query guardrails through the shipped Istio and Envoy Gateway patches, in real Envoy.

Neither Istio's WasmPlugin nor Envoy Gateway's EnvoyExtensionPolicy can set the Wasm
PluginConfig field `allow_on_headers_stop_iteration`; without it Envoy never calls the
filter's body callback after it paused the headers, so a request whose rule has `query`
guardrails waits for the filter's body timeout (15 s) and gets 408. The manifests ship a
patch for each platform (envoy/istio/envoyfilter.yaml, the EnvoyPatchPolicy
`lookergate-body-access` in envoy/envoy-gateway/extension-policy.yaml). This script
builds what each platform generates for the gateway listener (shapes taken from the
platforms' own sources and golden files, cited below), applies the shipped patch with
the platform's semantics, loads the result in Envoy (1.40, `make envoy`) with the real
broker, Looker simulator and dev IdP, and sends a guarded query:

  istio-patched     the EnvoyFilter applied (ECDS config + INSERT_FIRST)     -> 200
  istio-wasmplugin  what a WasmPlugin generates (no allow_on_...)            -> 408
  istio-no-filter   the gateway without the filter (selector mismatch):
                    the AuthorizationPolicy of looker.yaml refuses           -> 403
  eg-patched        EG's listener + the EnvoyPatchPolicy JSON patch          -> 200
  eg-unpatched      EG's listener as generated                               -> 408

The plugin configuration is the shipped one, unchanged but for one added `query`
guardrail (the shipped rules have none) and the broker credential's value; the IdP runs
with the shipped issuer. Cluster names are the platforms' (Istio `outbound|...`, the EG
patch's), pointed at local processes; TLS to the IdP is left out (the dev IdP is plain
HTTP). All five Envoys run at once, so the two 408 cases cost one body timeout.

Run from the repository root: `python3 tests/mesh_patch_check.py` (exit 1 on failure);
`tests/deploy_check.py` runs it as one check. Binaries: LOOKERGATE_ENVOY, LOOKERGATE_WASM,
LOOKERGATE_BROKER_BIN, LOOKERGATE_SIM_BIN, LOOKERGATE_IDP_BIN, else the usual build paths
(`make wasm envoy test-bins`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVOY = Path(os.environ.get("LOOKERGATE_ENVOY", ROOT / ".venv/bin/envoy"))
WASM = Path(os.environ.get("LOOKERGATE_WASM", ROOT / "target/wasm32-wasip1/release/lookergate.wasm"))
BROKER = Path(os.environ.get("LOOKERGATE_BROKER_BIN", ROOT / "target/debug/lookergate-broker"))
SIM = Path(os.environ.get("LOOKERGATE_SIM_BIN", ROOT / "target/debug/lookergate-looker-sim"))
IDP = Path(os.environ.get("LOOKERGATE_IDP_BIN", ROOT / "target/debug/lookergate"))
ISTIO_FILTER = ROOT / "envoy/istio/envoyfilter.yaml"
ISTIO_LOOKER = ROOT / "envoy/istio/looker.yaml"
EG_POLICY = ROOT / "envoy/envoy-gateway/extension-policy.yaml"

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HCM_NAME = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
LOOKER_HOST = "looker-api.example.com"
QUERY_PATH = "/api/4.0/queries/run/json"
# A query the added guardrail allows (the simulator answers run_inline_query with 200).
GOOD_QUERY = {"model": "thelook", "view": "orders", "fields": ["orders.status", "orders.count"], "limit": "100"}
GUARDRAIL = {"models": ["thelook"], "views": ["orders"], "max_limit": 500}
# The filter answers a body that never came after 15 s (src/flow/mod.rs BODY_WAIT).
REQUEST_DEADLINE = 25.0
# Envoy compiles the 1 MB module in V8 once per VM: seconds each on a busy machine.
READY_DEADLINE = 45.0


class Failed(Exception):
    pass


def require(condition, message):
    if not condition:
        raise Failed(message)


def docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(path: Path, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs(path) if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    require(len(found) == 1, f"{path}: expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def with_guardrail(plugin_json: str, credential: str) -> str:
    """The shipped plugin configuration with a `query` guardrail on its run_inline_query
    rule and the broker credential the local broker accepts."""
    plugin = json.loads(plugin_json)
    rules = [r for r in plugin["policy"]["rules"] if "run_inline_query" in r.get("operations", [])]
    require(rules, "no shipped rule allows run_inline_query")
    rules[0]["query"] = GUARDRAIL
    if "credential_env" not in plugin["broker"]:
        plugin["broker"]["credential"] = credential
    return json.dumps(plugin)


def static_cluster(name: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


def bootstrap(listener: dict, clusters: list[dict]) -> dict:
    return {
        # A node identity, as every xDS client has (file-based ECDS needs one too).
        "node": {"id": "router~127.0.0.1~gateway.lookergate-test~cluster.local", "cluster": "lookergate-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def local_code(wasm_config: dict):
    """What the platform's agent does with a remote module before Envoy sees it: Istio's
    agent pulls the OCI image and rewrites vm_config.code to a local file
    (pkg/wasm/convert.go rewriteVMConfig); Envoy Gateway serves it from its own HTTP
    cache (remote http_uri + sha256). Here: the local build."""
    wasm_config["vm_config"]["code"] = {"local": {"filename": str(WASM)}}


# ---- Istio -------------------------------------------------------------------------


def istio_rbac(policy: dict) -> dict:
    """The RBAC filter Istio builds for the AuthorizationPolicy of looker.yaml, for the
    fields it uses: a DENY policy whose rules have only `when` conditions on request
    headers. Shape as in istio/istio pilot/pkg/security/authz/builder/testdata/http/
    allow-full-rule-out.yaml: request.headers conditions become principals; values
    `x*` a prefix match, `*` presence, anything else exact; notValues a not_id."""
    spec = policy["spec"]
    require(spec.get("action") == "DENY" and "selector" not in spec, f"AuthorizationPolicy spec {spec}")

    def matcher(name, value):
        if value == "*":
            return {"header": {"name": name, "present_match": True}}
        if value.endswith("*"):
            return {"header": {"name": name, "string_match": {"prefix": value[:-1]}}}
        return {"header": {"name": name, "string_match": {"exact": value}}}

    policies = {}
    for i, rule in enumerate(spec["rules"]):
        require(set(rule) == {"when"}, f"rule {i}: only `when` is translated here, got {sorted(rule)}")
        ids = []
        for cond in rule["when"]:
            m = re.fullmatch(r"request\.headers\[(.+)\]", cond["key"])
            require(m is not None, f"condition key {cond['key']!r} is not translated here")
            if "values" in cond:
                ids.append({"or_ids": {"ids": [matcher(m.group(1), v) for v in cond["values"]]}})
            if "notValues" in cond:
                ids.append({"not_id": {"or_ids": {"ids": [matcher(m.group(1), v) for v in cond["notValues"]]}}})
        name = f"ns[{policy['metadata']['namespace']}]-policy[{policy['metadata']['name']}]-rule[{i}]"
        policies[name] = {"permissions": [{"and_rules": {"rules": [{"any": True}]}}], "principals": [{"and_ids": {"ids": ids}}]}
    return {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC_TYPE, "rules": {"action": "DENY", "policies": policies}}}


def istio_gateway_listener(rbac: dict) -> dict:
    """An Istio ingress gateway's HTTP listener, as istiod builds it: use_remote_address
    (gateways), HTTP filters in the order of pilot/pkg/networking/core/listener_builder.go
    buildHTTPConnectionManager: [AUTHN wasm] authn, [AUTHZ wasm] rbac, [STATS] grpc_stats,
    fault, cors, telemetry, router. Istio-proxy-only filters (istio.alpn, istio.stats) and
    authn (no RequestAuthentication) are left out: stock Envoy has no istio.* filters.
    Routes from the VirtualService, reduced to the /api/ route (the patch touches no route)."""
    filters = [
        rbac,
        {"name": "envoy.filters.http.grpc_stats", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            "emit_filter_state": True, "stats_for_all_methods": False}},
        {"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
        ROUTER,
    ]
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "outbound_0.0.0.0_443",
        "use_remote_address": True,
        "http_filters": filters,
        "route_config": {
            "name": "https.443.https.looker-api.istio-ingress",
            "virtual_hosts": [{
                "name": f"{LOOKER_HOST}:443",
                "domains": [LOOKER_HOST, f"{LOOKER_HOST}:*"],
                "routes": [{"match": {"prefix": "/api/"}, "route": {"cluster": "outbound|80||looker.example.com", "timeout": "30s"}}],
            }],
        },
    }
    return {
        "name": "0.0.0.0_443",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": HCM_NAME, "typed_config": hcm}]}],
    }


def apply_envoy_filter(listener: dict, envoy_filter: dict, ecds_path: Path) -> list[dict]:
    """Applies an EnvoyFilter to a gateway listener as istiod does, for the operations the
    shipped one uses, and returns the ECDS resources it adds. EXTENSION_CONFIG + ADD: the
    value becomes an extension config served over ECDS (istiod serves only ADDed ones:
    pilot/pkg/networking/core/envoyfilter/extension_configuration_patch.go). HTTP_FILTER +
    INSERT_FIRST matching the HTTP connection manager: the value goes first in its
    http_filters. Istio's ADS config source becomes a file here (no xDS server); the
    resource and the filter's config discovery are otherwise as shipped."""
    ecds = []
    for patch in envoy_filter["spec"]["configPatches"]:
        apply_to, op, match = patch["applyTo"], patch["patch"]["operation"], patch["match"]
        require(match.get("context") == "GATEWAY", f"{apply_to}: context {match.get('context')!r}, expected GATEWAY")
        value = copy.deepcopy(patch["patch"]["value"])
        if (apply_to, op) == ("EXTENSION_CONFIG", "ADD"):
            ecds.append(value)
        elif (apply_to, op) == ("HTTP_FILTER", "INSERT_FIRST"):
            wanted = match["listener"]["filterChain"]["filter"]["name"]
            require(wanted == HCM_NAME, f"HTTP_FILTER patch matches {wanted!r}")
            source = value["config_discovery"]["config_source"]
            require(source.pop("ads", None) == {}, f"config source {source}: expected ads")
            source["path_config_source"] = {"path": str(ecds_path)}
            hcms = [f["typed_config"] for c in listener["filter_chains"] for f in c["filters"] if f["name"] == HCM_NAME]
            require(hcms, "listener has no HTTP connection manager")
            for hcm in hcms:
                hcm["http_filters"].insert(0, copy.deepcopy(value))
        else:
            raise Failed(f"EnvoyFilter operation {apply_to}/{op} is not implemented here: extend apply_envoy_filter")
    return ecds


def ecds_file(resources: list[dict]) -> dict:
    return {
        "version_info": "1",
        "resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig", **r} for r in resources],
    }


def istio_cases(ports: dict, tmp: Path) -> dict[str, tuple[dict, dict[str, dict]]]:
    """name -> (Envoy bootstrap, {path: file content}) for the three Istio cases."""
    envoy_filter = one(ISTIO_FILTER, "EnvoyFilter")
    policy = one(ISTIO_LOOKER, "AuthorizationPolicy")
    (wasm_value,) = [p["patch"]["value"] for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"]
    plugin = json.loads(wasm_value["typed_config"]["config"]["configuration"]["value"])
    # Istio's cluster names for the ServiceEntries (outbound|<port>||<host>), local here.
    clusters = [
        static_cluster("outbound|80||looker.example.com", ports["sim"]),
        static_cluster(plugin["broker"]["cluster"], ports["broker"]),
        static_cluster(plugin["issuers"][0]["cluster"], ports["idp"]),
    ]
    cases = {}
    for case in ("istio-patched", "istio-wasmplugin", "istio-no-filter"):
        listener = istio_gateway_listener(istio_rbac(policy))
        files = {}
        if case != "istio-no-filter":
            path = tmp / f"{case}.ecds.yaml"
            ecds = apply_envoy_filter(listener, envoy_filter, path)
            require(len(ecds) == 1, f"expected one extension config, got {len(ecds)}")
            config = ecds[0]["typed_config"]["config"]
            require(config["configuration"]["@type"].endswith("StringValue"), "configuration is not a StringValue")
            local_code(config)
            config["configuration"]["value"] = with_guardrail(config["configuration"]["value"], credential(plugin))
            if case == "istio-wasmplugin":
                # A WasmPlugin's extension config: name, root_id, configuration, vm and
                # failure_policy only (pilot/pkg/model/extensions.go).
                # No vm_id either (buildVMConfig sets the runtime only).
                require(config.pop("allow_on_headers_stop_iteration", None) is True, "the EnvoyFilter does not set allow_on_headers_stop_iteration")
                config["vm_config"].pop("vm_id", None)
            files[str(path)] = ecds_file(ecds)
        cases[case] = (bootstrap(listener, clusters), files)
    return cases


# ---- Envoy Gateway -----------------------------------------------------------------


def eg_filter_name(policy: dict, index: int) -> str:
    # internal/xds/translator/wasm.go wasmFilterName; testdata/out/xds-ir/wasm.listeners.yaml
    return f"envoy.filters.http.wasm/envoyextensionpolicy/{policy['metadata']['namespace']}/{policy['metadata']['name']}/wasm/{index}"


def eg_listener(policy: dict, listener_name: str) -> dict:
    """The listener Envoy Gateway generates for a Gateway listener whose HTTPRoute has the
    EnvoyExtensionPolicy, after internal/xds/translator/testdata/out/xds-ir/
    wasm.listeners.yaml and wasm.routes.yaml (proto field names, as EnvoyPatchPolicy sees
    it: jsonpatch.go marshals with UseProtoNames): the Wasm filter in the connection
    manager, disabled, enabled per route by an empty FilterConfig; PluginConfig with name,
    root_id, vm_id envoyextensionpolicy/<ns>/<name>/wasm/<i>, configuration and fail_open
    (wasm.go sets nothing else), and env.hostKeys as vm_config.environment_variables.host_env_keys.
    Routes reduced to the HTTPRoute's /api/ rule."""
    (wasm,) = policy["spec"]["wasm"]
    name = eg_filter_name(policy, 0)
    vm_id = name.removeprefix("envoy.filters.http.wasm/")
    config = {
        "name": wasm["name"],
        "root_id": wasm["rootID"],
        "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8", "code": {}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(wasm["config"])},
    }
    if wasm.get("failOpen"):
        config["fail_open"] = True
    if wasm.get("env", {}).get("hostKeys"):
        config["vm_config"]["environment_variables"] = {"host_env_keys": wasm["env"]["hostKeys"]}
    local_code(config)
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "https-443",
        "use_remote_address": True,
        "http_filters": [
            {"name": name, "disabled": True, "typed_config": {"@type": WASM_TYPE, "config": config}},
            {"name": "envoy.filters.http.router", "typed_config": {**ROUTER["typed_config"], "suppress_envoy_headers": True}},
        ],
        "route_config": {
            "name": listener_name,
            "virtual_hosts": [{
                "name": f"{listener_name}/looker-api_example_com",
                "domains": [LOOKER_HOST],
                "routes": [{
                    "name": "httproute/lookergate/looker-api/rule/1/match/0/looker-api_example_com",
                    "match": {"path_separated_prefix": "/api"},
                    "route": {"cluster": "httproute/lookergate/looker-api/rule/1", "timeout": "30s"},
                    "typed_per_filter_config": {name: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}},
                }],
            }],
        },
    }
    return {
        "name": listener_name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": HCM_NAME, "typed_config": hcm}]}],
    }


def json_pointer_tokens(pointer: str) -> list[str]:
    require(pointer == "" or pointer.startswith("/"), f"bad JSON pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def json_path_pointers(document, expression: str) -> list[str]:
    """The JSON pointers a JSONPath selects, for the forms EG's jsonPath accepts and the
    shipped patch uses: `$`, `..name` (recursive descent), `.name`, `[?(@.key=='v')]`
    (internal/utils/jsonpatch ConvertPathToPointers, via ohler55/ojg)."""
    tokens = re.findall(r"\$|\.\.[A-Za-z_][A-Za-z0-9_]*|\.[A-Za-z_][A-Za-z0-9_]*|\[\?\(@\.[A-Za-z_]+\s*==\s*'[^']*'\)\]", expression)
    require("".join(tokens) == expression.replace(" ", "") or "".join(tokens) == expression,
            f"jsonPath {expression!r}: only $, ..name, .name and [?(@.k=='v')] are implemented here")
    escape = lambda t: t.replace("~", "~0").replace("/", "~1")
    nodes = [("", document)]
    for token in tokens:
        out = []
        if token == "$":
            continue
        if token.startswith(".."):
            key = token[2:]

            def descend(pointer, node):
                if isinstance(node, dict):
                    for k, v in node.items():
                        if k == key:
                            out.append((f"{pointer}/{escape(k)}", v))
                        descend(f"{pointer}/{escape(k)}", v)
                elif isinstance(node, list):
                    for i, v in enumerate(node):
                        descend(f"{pointer}/{i}", v)

            for pointer, node in nodes:
                descend(pointer, node)
        elif token.startswith("."):
            key = token[1:]
            out = [(f"{p}/{escape(key)}", n[key]) for p, n in nodes if isinstance(n, dict) and key in n]
        else:
            key, value = re.fullmatch(r"\[\?\(@\.([A-Za-z_]+)\s*==\s*'([^']*)'\)\]", token).groups()
            for pointer, node in nodes:
                items = enumerate(node) if isinstance(node, list) else ((escape(k), v) for k, v in node.items()) if isinstance(node, dict) else []
                out.extend((f"{pointer}/{i}", v) for i, v in items if isinstance(v, dict) and v.get(key) == value)
        nodes = out
    return [p for p, _ in nodes]


def json_patch_add(document, pointer: str, value):
    """RFC 6902 `add`, with EG's EnsurePathExistsOnAdd (missing parents become objects)."""
    tokens = json_pointer_tokens(pointer)
    require(tokens, "add at the document root is not a listener patch")
    node = document
    for token in tokens[:-1]:
        if isinstance(node, list):
            node = node[int(token)]
        else:
            node = node.setdefault(token, {})
    last = tokens[-1]
    if isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), value)
    else:
        node[last] = value


def apply_envoy_patch_policy(resources: dict, policy: dict):
    """Applies an EnvoyPatchPolicy's JSON patches as Envoy Gateway does
    (internal/xds/translator/jsonpatch.go, internal/utils/jsonpatch/patch.go), for the
    operations the shipped policies use: `add` of a whole resource (path and jsonPath
    empty) and `add` at jsonPath (+ path appended to each pointer it yields; none found is
    an error). resources: {"listeners": {name: json}, "clusters": {name: json}}."""
    kinds = {
        "type.googleapis.com/envoy.config.listener.v3.Listener": "listeners",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster": "clusters",
    }
    for patch in policy["spec"]["jsonPatches"]:
        kind = kinds.get(patch["type"])
        require(kind, f"patch type {patch['type']} not implemented here")
        operation = patch["operation"]
        require(operation["op"] == "add", f"op {operation['op']!r} not implemented here")
        path, json_path = operation.get("path", ""), operation.get("jsonPath")
        if not path and not json_path:
            resources[kind][operation["value"]["name"]] = copy.deepcopy(operation["value"])
            continue
        require(patch["name"] in resources[kind], f"unable to find xds resource {patch['type']}: {patch['name']}")
        document = resources[kind][patch["name"]]
        pointers = [p + path for p in json_path_pointers(document, json_path)] if json_path else [path]
        require(pointers, f"no jsonPointers were found while evaluating the jsonPath {json_path!r}")
        for pointer in pointers:
            json_patch_add(document, pointer, copy.deepcopy(operation["value"]))


def eg_cases(ports: dict) -> dict[str, tuple[dict, dict[str, dict]]]:
    extension = one(EG_POLICY, "EnvoyExtensionPolicy")
    body_patch = one(EG_POLICY, "EnvoyPatchPolicy", "lookergate-body-access")
    cluster_patch = one(EG_POLICY, "EnvoyPatchPolicy", "lookergate-broker-cluster")
    (listener_patch,) = body_patch["spec"]["jsonPatches"]
    listener_name = listener_patch["name"]
    wasm = extension["spec"]["wasm"][0]
    plugin = wasm["config"]
    wasm["config"] = json.loads(with_guardrail(json.dumps(plugin), credential(plugin)))
    cases = {}
    for case in ("eg-patched", "eg-unpatched"):
        resources = {"listeners": {listener_name: eg_listener(extension, listener_name)}, "clusters": {}}
        apply_envoy_patch_policy(resources, cluster_patch)
        if case == "eg-patched":
            apply_envoy_patch_policy(resources, body_patch)
            configs = [f["typed_config"]["config"] for f in resources["listeners"][listener_name]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] if f["name"] == eg_filter_name(extension, 0)]
            require(configs and configs[0].get("allow_on_headers_stop_iteration") is True, "the patch did not set allow_on_headers_stop_iteration on the generated filter")
        # The patch's clusters (broker, IdP) at the local processes; plain HTTP.
        clusters = []
        for name, cluster in resources["clusters"].items():
            port = ports["broker"] if name == plugin["broker"]["cluster"] else ports["idp"] if name == plugin["issuers"][0]["cluster"] else None
            require(port, f"patched-in cluster {name!r} is neither the broker's nor the IdP's")
            clusters.append(static_cluster(name, port))
        clusters.append(static_cluster("httproute/lookergate/looker-api/rule/1", ports["sim"]))
        (listener,) = resources["listeners"].values()
        cases[case] = (bootstrap(listener, clusters), {})
    return cases


# The broker credential of a shipped plugin that reads it from the VM's environment
# (broker.credential_env LOOKERGATE_BROKER_CREDENTIAL): every Envoy here gets it.
ENV_CREDENTIAL = "mesh-patch-check-gateway-credential"


def credential(plugin: dict) -> str:
    return plugin["broker"].get("credential", ENV_CREDENTIAL)



# ---- processes ---------------------------------------------------------------------


class Stack:
    """The simulator, the dev IdP (with the shipped issuer) and the broker, on free ports."""

    def __init__(self, tmp: Path, issuer: str, credentials: set[str]):
        self.tmp, self.procs = tmp, []
        self.ports = {
            "sim": self.service("sim", [str(SIM), "--listen", "127.0.0.1:0"], {}),
            "idp": self.service("idp", [str(IDP), "idp", "--listen", "127.0.0.1:0", "--issuer", issuer], {}),
        }
        env = {
            "LOOKERGATE_BROKER_LOOKER_URL": f"http://127.0.0.1:{self.ports['sim']}",
            "LOOKERGATE_BROKER_GATEWAY_CREDENTIALS": ",".join(sorted(credentials)),
        }
        self.ports["broker"] = self.service("broker", [str(BROKER), "--listen", "127.0.0.1:0"], env)

    def service(self, name: str, argv: list[str], env: dict) -> int:
        log = (self.tmp / f"{name}.log").open("w")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env={**os.environ, **env})
        self.procs.append(proc)
        line = proc.stdout.readline().strip()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", line)
        require(m is not None, f"{name} did not print `listening on <addr>` (got {line!r}); log:\n{(self.tmp / f'{name}.log').read_text()[-2000:]}")
        return int(m.group(1))

    def envoy(self, case: str, config: dict, base_id: int) -> "Envoy":
        return Envoy(self, case, config, base_id)

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


class Envoy:
    def __init__(self, stack: Stack, case: str, config: dict, base_id: int):
        self.case, self.tmp = case, stack.tmp
        path = stack.tmp / f"{case}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.admin_path = stack.tmp / f"{case}.admin"
        self.log = stack.tmp / f"{case}.envoy.log"
        self.proc = subprocess.Popen(
            [str(ENVOY), "-c", str(path), "--base-id", str(base_id), "--concurrency", "1", "--disable-hot-restart",
             "--log-level", "warn", "--admin-address-path", str(self.admin_path)],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "LOOKERGATE_BROKER_CREDENTIAL": ENV_CREDENTIAL},
        )
        stack.procs.append(self.proc)
        self.port = None

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def wait_ready(self, deadline: float):
        """Admin ready, listener bound; returns the listener port."""
        while time.monotonic() < deadline:
            require(self.proc.poll() is None, f"{self.case}: Envoy exited {self.proc.returncode}\n{self.log_tail()}")
            if self.admin_path.exists() and self.admin_path.read_text().strip():
                admin = self.admin_path.read_text().strip()
                try:
                    with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as r:
                        ready = r.status == 200
                    if ready:
                        with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=1) as r:
                            listeners = json.load(r)["listener_statuses"]
                        self.port = listeners[0]["local_address"]["socket_address"]["port_value"]
                        return
                except (urllib.error.URLError, OSError, KeyError, IndexError):
                    pass
            time.sleep(0.1)
        raise Failed(f"{self.case}: Envoy not ready in time\n{self.log_tail()}")


def token(issuer: str, user: str) -> str:
    out = subprocess.run([str(IDP), "token", "--user", user, "--iss", issuer], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def request(port: int, method: str, path: str, jwt: str, body: bytes | None, timeout: float) -> tuple[int, str, float]:
    """(status, body, seconds) of one HTTP/1.1 request through Envoy."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        head = f"{method} {path} HTTP/1.1\r\nhost: {LOOKER_HOST}\r\nauthorization: Bearer {jwt}\r\nconnection: close\r\n"
        if body is not None:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        s.sendall(head.encode() + b"\r\n" + (body or b""))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.decode(errors="replace").partition("\r\n")
    m = re.match(r"HTTP/1\.1 (\d{3})", status_line)
    require(m is not None, f"no HTTP answer: {data[:200]!r}")
    return int(m.group(1)), rest.split("\r\n\r\n", 1)[-1], time.monotonic() - started


def wait_for_keys(envoy: Envoy, jwt: str, deadline: float):
    """The filter answers 503 until it has the IdP's keys; a GET the shipped rules allow
    then reaches Looker (200). Without the filter the RBAC filter answers 403 at once."""
    while time.monotonic() < deadline:
        status, body, _ = request(envoy.port, "GET", "/api/4.0/user", jwt, None, 5)
        if status != 503:
            return status, body
        time.sleep(0.2)
    raise Failed(f"{envoy.case}: still 503 (keys) at the deadline\n{envoy.log_tail()}")


# What identifies each refusal in the reply body: the filter's body timeout, Istio's RBAC.
REFUSAL_MARKS = {408: "body_timeout", 403: "RBAC: access denied"}

EXPECTED = {
    # case: (status of GET /api/4.0/user, status of the guarded POST)
    "istio-patched": (200, 200),
    "istio-wasmplugin": (200, 408),
    "istio-no-filter": (403, 403),
    "eg-patched": (200, 200),
    "eg-unpatched": (200, 408),
}


def run(log=print) -> list[str]:
    """Runs every case; returns the failures (empty: all passed). Logs one line per case."""
    for path in (ENVOY, WASM, BROKER, SIM, IDP):
        require(path.exists(), f"{path} is missing (make wasm envoy test-bins, or set LOOKERGATE_*)")
    istio_plugin = json.loads(
        [p for p in one(ISTIO_FILTER, "EnvoyFilter")["spec"]["configPatches"] if p["applyTo"] == "EXTENSION_CONFIG"][0]
        ["patch"]["value"]["typed_config"]["config"]["configuration"]["value"]
    )
    eg_plugin = one(EG_POLICY, "EnvoyExtensionPolicy")["spec"]["wasm"][0]["config"]
    issuer = istio_plugin["issuers"][0]["issuer"]
    require(eg_plugin["issuers"][0]["issuer"] == issuer, "the Istio and Envoy Gateway plugin configs name different issuers: run them apart")
    failures = []
    with tempfile.TemporaryDirectory(prefix="lookergate-mesh-") as tmp_name:
        tmp = Path(tmp_name)
        stack = Stack(tmp, issuer, {credential(istio_plugin), credential(eg_plugin)})
        try:
            cases = {**istio_cases(stack.ports, tmp), **eg_cases(stack.ports)}
            for files in (f for _, f in cases.values()):
                for path, content in files.items():
                    Path(path).write_text(yaml.safe_dump(content, sort_keys=False))
            base = 40000 + os.getpid() % 1000 * 10
            jwt = token(issuer, "alice")
            body = json.dumps(GOOD_QUERY).encode()
            deadline = time.monotonic() + READY_DEADLINE
            # The cases that wait out the filter's body timeout start first; the others start
            # once those have sent their query, and compile their VMs during that wait
            # (each Envoy compiles the module in V8: seconds of CPU on this machine).
            slow = [case for case in cases if EXPECTED[case][1] == 408]
            sending = {case: threading.Event() for case in slow}
            envoys: dict[str, Envoy] = {}

            def run_case(i: int, case: str):
                if case not in slow:
                    for event in sending.values():
                        event.wait(max(0.0, deadline - time.monotonic()))
                envoy = envoys[case] = stack.envoy(case, cases[case][0], base + i)
                try:
                    envoy.wait_ready(deadline)
                    probe = wait_for_keys(envoy, jwt, deadline)
                finally:
                    sending.get(case, threading.Event()).set()
                return probe, request(envoy.port, "POST", QUERY_PATH, jwt, body, REQUEST_DEADLINE)

            with ThreadPoolExecutor(len(cases)) as pool:
                futures = {case: pool.submit(run_case, i, case) for i, case in enumerate(cases)}
                answers = {}
                for case, future in futures.items():
                    try:
                        answers[case] = future.result()
                    except (Failed, OSError) as e:
                        failures.append(f"{case}: {e}")
            for case in answers:
                envoy = envoys[case]
                (get_status, get_body), (status, reply, seconds) = answers[case]
                want_get, want_post = EXPECTED[case]
                line = f"{case}: GET /api/4.0/user {get_status}, guarded POST {QUERY_PATH} {status} in {seconds:.1f}s"
                log(line)
                mark = REFUSAL_MARKS.get(want_post)
                if (get_status, status) != (want_get, want_post) or (mark and mark not in reply):
                    failures.append(f"{line}; expected GET {want_get}, POST {want_post} {mark or ''}\n  GET body: {get_body[:300]}\n  POST body: {reply[:300]}\n{envoy.log_tail()}")
            # Looker got exactly the allowed queries, each with the Looker token the filter set.
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['sim']}/__sim/requests", timeout=5) as r:
                received = json.load(r)
            queries = [q for q in received if q["method"] == "POST" and q["path"].endswith(QUERY_PATH)]
            allowed = sum(1 for want in EXPECTED.values() if want[1] == 200)
            tokens = [q["headers"].get("authorization", "") for q in queries]
            if len(queries) != allowed or not all(t.startswith("token ") for t in tokens):
                failures.append(f"Looker received {len(queries)} queries (expected {allowed}), authorization schemes {[t.split(' ')[0] for t in tokens]}")
            else:
                log(f"Looker received the {allowed} allowed queries, each with the filter's Looker token")
        finally:
            stack.stop()
    return failures


def report(run) -> int:
    """Runs a check (`run` returns its failures), prints them and the verdict; exit code."""
    started = time.monotonic()
    try:
        failures = run()
    except Failed as e:
        failures = [str(e)]
    for failure in failures:
        print(f"FAILED {failure}")
    print(f"{'FAILED' if failures else 'PASSED'} in {time.monotonic() - started:.1f}s")
    return 1 if failures else 0


def main() -> int:
    return report(run)


if __name__ == "__main__":
    sys.exit(main())
