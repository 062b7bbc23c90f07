"""One sample operation for every tag of Looker's API spec, driven through the gateway by
both official SDKs (tests/sdk/test_looker_sdk.py, tests/sdk/ts/test_looker_sdk.js).

The demo policy does not grant everything, so tests/sdk/run.sh gives the SDK test its own
principal: tokens of a test-only issuer (SAMPLER_ISSUER, the demo's keys) that one rule,
appended after the demo's rules, allows exactly the sampled operations. The demo's own
rules still decide first, so its contract holds for the sampler too (SQL Runner stays
denied: that tag's sample expects the demo's 403).

  tag_samples.py samples               the samples, as JSON (what the TypeScript test reads)
  tag_samples.py envoy DEMO_YAML       DEMO_YAML with the sampler's issuer and rule, to stdout

Per tag: a GET with no path parameter if there is one (stable before beta/alpha, non_query
first), else a GET with the fewest path parameters (demo values: model thelook, view
orders, ids 1); a tag with no GET gets a non-GET operation, named in NO_GET below.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Any, Dict, List

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = ROOT / "looker-sim/spec/Looker.4.0.oas.json"
OPERATIONS = ROOT / "proto/operations.tsv"
SAMPLER_ISSUER = "https://sdk-sampler.lookergate.test"
SAMPLER_RULE = "sdk-sampler-one-operation-per-tag"

# Tags without a GET operation, and how each is covered.
NO_GET = {
    # Client logins are the gateway's to refuse, whatever the policy says (403
    # gateway_owns_authentication): the sample asserts that refusal.
    "ApiAuth": {"operation": "login", "args": {}, "expect": 403,
                "refusal": "gateway_owns_authentication"},
    # A POST that reads no database: allowed by the sampler's rule, answered by Looker.
    "DataAction": {"operation": "fetch_remote_data_action_form", "args": {"body": {"name": "lookergate"}}},
    # Its only operation (alpha, a POST): allowed by the sampler's rule, answered by Looker.
    "KeyDriverAnalysis": {
        "operation": "run_key_driver_analysis",
        "args": {"body": {"data_source": {"model_name": "thelook", "explore_name": "orders"},
                          "contribution_metric": "orders.count", "dimensions": ["orders.status"]}},
        # The Python SDK takes this body as its model class (models40).
        "body_model": "KdaRequestPayload",
    },
}

# Operations the demo policy denies before any later rule (its `sql-runner-denied`).
DEMO_DENIED = {
    "create_sql_query", "sql_query", "run_sql_query", "create_sql_interface_query",
    "run_sql_interface_query", "sql_interface_metadata", "connection_cost_estimate",
}

PATH_VALUES = {"model": "thelook", "model_name": "thelook", "lookml_model_name": "thelook",
               "view": "orders", "view_name": "orders", "explore_name": "orders",
               "field_name": "orders.count"}
STATUS_ORDER = {"stable": 0, "beta": 1, "alpha": 2}


def _operations() -> Dict[str, Dict[str, str]]:
    table = {}
    for line in OPERATIONS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        method, path, op_id, tags, activity, status = line.split("\t")
        table[op_id] = {"method": method, "path": path, "tags": tags, "activity": activity, "status": status}
    return table


def _schema_kind(spec: Dict[str, Any], op: Dict[str, Any]) -> str:
    """array, object or string: what the 200 answer's JSON is."""
    content = op.get("responses", {}).get("200", {}).get("content", {})
    for media in ("application/json", "text"):
        if media in content:
            schema = content[media].get("schema", {})
            if "$ref" in schema:
                return "object"
            return schema.get("type", "object")
    return "string"


def samples() -> List[Dict[str, Any]]:
    spec = json.loads(SPEC.read_text())
    table = _operations()
    by_tag: Dict[str, List[Dict[str, Any]]] = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            for tag in op.get("tags", []):
                by_tag.setdefault(tag, []).append({"method": method.upper(), "path": path, "op": op})
    out = []
    for tag in sorted(by_tag):
        if tag in NO_GET:
            pick = dict(NO_GET[tag])
            op = next(o for o in by_tag[tag] if o["op"]["operationId"] == pick["operation"])
            out.append({"tag": tag, "method": op["method"], "path": op["path"], "operation": pick["operation"],
                        "args": pick["args"], "positional": [], "expect": pick.get("expect", 200),
                        "refusal": pick.get("refusal"), "body_model": pick.get("body_model"),
                        "kind": _schema_kind(spec, op["op"]), "get": False})
            continue
        candidates = []
        for o in by_tag[tag]:
            if o["method"] != "GET":
                continue
            params = o["op"].get("parameters", [])
            path_params = [p["name"] for p in params if p.get("in") == "path"]
            required_query = [p["name"] for p in params if p.get("in") == "query" and p.get("required")]
            op_id = o["op"]["operationId"]
            info = table[op_id]
            key = (
                len(path_params) + len(required_query),
                STATUS_ORDER.get(info["status"], 3),
                info["activity"] != "non_query",
                op_id,
            )
            candidates.append((key, o, path_params, required_query))
        if not candidates:
            raise SystemExit(f"tag {tag} has no GET operation and no entry in NO_GET")
        allowed = [c for c in candidates if c[1]["op"]["operationId"] not in DEMO_DENIED]
        _, o, path_params, required_query = min(allowed or candidates, key=lambda c: c[0])
        op_id = o["op"]["operationId"]
        args = {name: PATH_VALUES.get(name, "1") for name in path_params + required_query}
        denied = op_id in DEMO_DENIED
        out.append({"tag": tag, "method": "GET", "path": o["path"], "operation": op_id, "args": args,
                    # The order the TypeScript SDK takes them (path, then required query).
                    "positional": path_params + required_query,
                    "expect": 403 if denied else 200, "refusal": "sql-runner-denied" if denied else None, "body_model": None,
                    "kind": _schema_kind(spec, o["op"]), "get": True})
    return out


def sampler_rule() -> Dict[str, Any]:
    operations = sorted({s["operation"] for s in samples() if s["expect"] == 200})
    return {"name": SAMPLER_RULE, "issuers": [SAMPLER_ISSUER], "operations": operations,
            "allow": {"role": "viewer"}}


def envoy_yaml(demo_yaml: str) -> str:
    """The demo's Envoy config with the sampler's issuer (the demo keys, inline) and its
    rule appended after the demo's rules (whose per-user rules name the demo issuer, as the
    gateway requires once there are two): the plugin JSON is read, edited and written
    back in place, at its indentation."""
    lines = demo_yaml.split("\n")
    start = next(i for i, line in enumerate(lines) if line.strip() == "value: |" and
                 lines[i + 1].strip() == "{" and '"version": 1' in lines[i + 2])
    indent = re.match(r"\s*", lines[start + 1]).group(0)
    end = start + 1
    while end < len(lines) and (lines[end].startswith(indent) or not lines[end].strip()):
        end += 1
    plugin = json.loads("\n".join(line[len(indent):] for line in lines[start + 1:end]))
    demo_issuer = plugin["issuers"][0]
    jwks = json.loads((ROOT / "envoy/demo/demo-jwks.json").read_text())
    sampler_issuer = {k: v for k, v in demo_issuer.items() if k not in ("discovery", "cluster", "jwks_refresh")}
    sampler_issuer.update({"issuer": SAMPLER_ISSUER, "jwks": jwks})
    plugin["issuers"].append(sampler_issuer)
    # With two issuers the gateway requires rules that act as the user to name the ones
    # they trust: the demo's trust the demo issuer, as they did when it was the only one.
    for rule in plugin["policy"]["rules"]:
        if "user" in rule.get("allow", {}):
            rule.setdefault("issuers", [demo_issuer["issuer"]])
    plugin["policy"]["rules"].append(sampler_rule())
    body = [indent + line for line in json.dumps(plugin, indent=2).split("\n")]
    return "\n".join(lines[:start + 1] + body + lines[end:])


if __name__ == "__main__":
    if sys.argv[1:] == ["samples"]:
        print(json.dumps(samples(), indent=1))
    elif len(sys.argv) == 3 and sys.argv[1] == "envoy":
        print(envoy_yaml(pathlib.Path(sys.argv[2]).read_text()), end="")
    else:
        raise SystemExit(__doc__)
