#!/usr/bin/env python3
"""Every query of the Grafana dashboard, evaluated by a real Prometheus against the demo.

`make dashboard-check` (from the repository root). Starts the demo stack on free loopback
ports: the Looker simulator, the dev IdP, the broker (the demo config from a file, with
a rotation due at once, so it rotates and reloads) and Envoy with envoy/demo.yaml as
shipped (its `stats_config` included: envoy/stats-tags.yaml), the plugin JSON given one
shadow rule (named with a dot) and a rate limit on `viewers-read`. Starts Prometheus
(the Debian `prometheus` package, or LOOKERGATE_PROMETHEUS) scraping Envoy's
`/stats/prometheus` and the broker's `/metrics` every second, with a temporary storage
directory. Drives two rounds of traffic a few scrapes apart, so that every panel has
data: allowed and denied requests (missing, malformed and unknown-kid tokens, forbidden,
unknown operation, rate limited), shadow hits, a broker failure (Looker logins failing),
a token Looker rejects (401), a failed JWKS refetch. Then evaluates each target of each
panel of envoy/grafana/lookergate-dashboard.json through `/api/v1/query`
(`$__rate_interval` as 1m) and fails on an error, an empty result, or only NaN.

A second Envoy runs the same config the way Istio's bootstrap override and Envoy
Gateway's EnvoyProxy bootstrap (Merge) deliver the tags: its own `stats_tags`, plus
envoy/stats-tags.yaml merged in with `--config-yaml`; both sets of labels must appear.

Also fails when Envoy's Prometheus output has a lookergate_* metric whose name still
carries a variable part (a tag regex that did not match), when `/stats` no longer shows
the filter's full stat names, or when a panel selects on `__name__`.

Binaries: LOOKERGATE_ENVOY, LOOKERGATE_WASM, LOOKERGATE_BROKER_BIN, LOOKERGATE_SIM_BIN,
LOOKERGATE_IDP_BIN (else the usual build paths: `make wasm envoy test-bins`),
LOOKERGATE_PROMETHEUS (else `prometheus` on PATH); LOOKERGATE_DASHBOARD checks another
dashboard file. Needs PyYAML. Exit 1 on failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mesh_patch_check as mesh  # noqa: E402  (Envoy process, requests, token helpers)
from mesh_patch_check import Failed, require  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import stats_tags  # noqa: E402  (tools/stats_tags.py: the Istio / Envoy Gateway override)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = Path(os.environ.get("LOOKERGATE_DASHBOARD", ROOT / "envoy/grafana/lookergate-dashboard.json"))
DEMO = ROOT / "envoy/demo.yaml"
PROMETHEUS = os.environ.get("LOOKERGATE_PROMETHEUS") or shutil.which("prometheus") or "/usr/bin/prometheus"

ISSUER = "https://idp.lookergate.demo"
RATE_INTERVAL = "1m"
SCRAPE_INTERVAL_S = 1
READY_DEADLINE_S = 45.0

# lookergate_* metric families Envoy may export once the tags are extracted: a family
# outside this set has a reason, rule, code or issuer left in its name.
GATEWAY_FAMILIES = {
    "lookergate_decision", "lookergate_shadow", "lookergate_looker_token", "lookergate_broker_calls",
    "lookergate_broker_failure", "lookergate_broker_latency_ms", "lookergate_jwks_fetch",
    "lookergate_jwks_unknown_kid_refetch", "lookergate_jwks_keys", "lookergate_version",
    "lookergate_embed", "lookergate_embed_broker_latency_ms",
}

SHADOW_RULE = {"name": "shadow.block-dashboards", "shadow": True, "methods": ["GET"],
               "paths": ["/api/4.0/dashboards/**"], "deny": True}
VIEWER_LIMIT = {"per_second": 0.01, "burst": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 5) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Stack:
    """Simulator, dev IdP and broker on free ports; Envoy and Prometheus once started."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []
        self.sim = self.service("sim", [str(mesh.SIM), "--listen", "127.0.0.1:0"])
        self.idp = self.service("idp", [str(mesh.IDP), "idp", "--listen", "127.0.0.1:0", "--issuer", ISSUER])
        demo = subprocess.run([str(mesh.BROKER), "print-demo-config"], capture_output=True, text=True, check=True).stdout
        require('looker_url = "http://127.0.0.1:10080"' in demo and "[roles.viewer]\n" in demo,
                f"the broker's demo config changed shape:\n{demo}")
        # The viewer role's rotation is due at once (never rotated): the broker rotates its
        # API3 key against the simulator, then reloads its config.
        demo = demo.replace('looker_url = "http://127.0.0.1:10080"', f'looker_url = "http://{self.sim}"')
        demo = demo.replace("[roles.viewer]\n", '[roles.viewer]\nrotate_every = "1h"\n')
        self.broker_config = tmp / "broker.toml"
        self.broker_config.write_text(demo)
        self.broker = self.service("broker", [str(mesh.BROKER), "--config", str(self.broker_config), "--listen", "127.0.0.1:0"])
        self.broker_proc = self.procs[-1]

    def service(self, name: str, argv: list[str]) -> str:
        log = (self.tmp / f"{name}.log").open("w")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        line = proc.stdout.readline().strip()
        m = re.fullmatch(r"listening on (127\.0\.0\.1:\d+)", line)
        require(m is not None, f"{name} did not print `listening on <addr>` (got {line!r}); log:\n{self.log(name)}")
        return m.group(1)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def envoy_config(self) -> dict:
        """envoy/demo.yaml as shipped, on free ports, with this stack's upstreams and the
        added shadow rule and rate limit."""
        config = yaml.safe_load(DEMO.read_text())
        config["admin"]["address"]["socket_address"]["port_value"] = 0
        # The API listener only: the Looker UI host's (TLS, embedded dashboards) serves
        # no metric the dashboard reads, and its fixed port may be taken by a demo.
        listeners = config["static_resources"]["listeners"]
        listeners[:] = [l for l in listeners if l["name"] == "looker_api"]
        require(len(listeners) == 1, "envoy/demo.yaml has no listener looker_api")
        listener = listeners[0]
        listener["address"]["socket_address"]["port_value"] = 0
        listener.pop("access_log", None)
        upstreams = {"looker": self.sim, "lookergate_broker": self.broker, "lookergate_idp": self.idp}
        for cluster in config["static_resources"]["clusters"]:
            if not cluster["load_assignment"].get("endpoints"):
                continue  # no endpoints (the embed prefix's cluster): nothing to point
            port = int(upstreams[cluster["name"]].rsplit(":", 1)[1])
            for group in cluster["load_assignment"]["endpoints"]:
                for lb in group["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"]["port_value"] = port
        wasm = next(mesh_wasm_configs(config))
        wasm["vm_config"]["code"]["local"]["filename"] = str(mesh.WASM)
        plugin = json.loads(wasm["configuration"]["value"])
        rules = plugin["policy"]["rules"]
        viewers = [r for r in rules if r["name"] == "viewers-read"]
        require(len(viewers) == 1, "envoy/demo.yaml has no `viewers-read` rule to rate-limit")
        viewers[0]["rate_limit"] = VIEWER_LIMIT
        rules.insert(0, SHADOW_RULE)
        wasm["configuration"]["value"] = json.dumps(plugin)
        return config

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def mesh_wasm_configs(node):
    if isinstance(node, dict):
        if node.get("name") == "envoy.filters.http.wasm":
            yield node["typed_config"]["config"]
        for value in node.values():
            yield from mesh_wasm_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from mesh_wasm_configs(value)


def token(user: str, kid: str | None = None) -> str:
    argv = [str(mesh.IDP), "token", "--user", user, "--iss", ISSUER] + (["--kid", kid] if kid else [])
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


class MergedEnvoy(mesh.Envoy):
    """Envoy as Istio and Envoy Gateway run it: a bootstrap with tags of its own, and
    envoy/stats-tags.yaml merged in with `--config-yaml` (what pilot-agent does with the
    bootstrap override; Envoy Gateway's Merge is the same proto merge)."""

    PLATFORM_TAG = {"tag_name": "platform_cluster", "regex": "^cluster\\.((.+?)\\.)"}

    def __init__(self, stack: Stack, base_id: int):
        self.case, self.tmp = "merged", stack.tmp
        config = stack.envoy_config()
        config["stats_config"] = {"stats_tags": [self.PLATFORM_TAG]}
        path = stack.tmp / "merged.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        override = yaml.safe_load(stats_tags.istio_config_map("istio-ingress"))["data"]["custom_bootstrap.json"]
        self.admin_path = stack.tmp / "merged.admin"
        self.log = stack.tmp / "merged.envoy.log"
        self.proc = subprocess.Popen(
            [str(mesh.ENVOY), "-c", str(path), "--config-yaml", json.dumps(yaml.safe_load(override)),
             "--base-id", str(base_id), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn",
             "--admin-address-path", str(self.admin_path)],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        stack.procs.append(self.proc)
        self.port = None


class Prometheus:
    def __init__(self, stack: Stack, envoy_admin: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "scrape_timeout": f"{SCRAPE_INTERVAL_S}s"},
            "scrape_configs": [
                {"job_name": "envoy", "metrics_path": "/stats/prometheus", "static_configs": [{"targets": [envoy_admin]}]},
                {"job_name": "broker", "metrics_path": "/metrics", "static_configs": [{"targets": [stack.broker]}]},
            ],
        }
        path = stack.tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = stack.tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={stack.tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        stack.procs.append(self.proc)

    def wait_ready(self, deadline: float):
        while time.monotonic() < deadline:
            require(self.proc.poll() is None, f"Prometheus exited {self.proc.returncode}\n{self.log.read_text()[-2000:]}")
            try:
                if http("GET", f"{self.url}/-/ready", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise Failed(f"Prometheus not ready in time\n{self.log.read_text()[-2000:]}")

    def query(self, expr: str) -> dict:
        status, body = http("GET", f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        try:
            answer = json.loads(body)
        except json.JSONDecodeError:
            answer = {"status": "error", "error": f"HTTP {status}: {body[:300]}"}
        return answer

    def wait_scraped_after(self, moment: float, deadline: float):
        """Until both targets were scraped (successfully) after unix time `moment`."""
        while time.monotonic() < deadline:
            result = self.query("timestamp(up == 1)").get("data", {}).get("result", [])
            times = {r["metric"]["job"]: float(r["value"][1]) for r in result}
            if len(times) == 2 and min(times.values()) > moment:
                return
            time.sleep(0.2)
        raise Failed(f"Prometheus did not scrape both targets after the traffic: {self.query('up')}")


def drive_traffic(stack: Stack, port: int, round_no: int) -> list[str]:
    """One round of requests; returns `status path user` lines for the log."""
    alice, bob, eve = token("alice"), token("bob"), token("eve")
    seen = []

    def send(jwt: str, path: str, label: str, want: int | None = None):
        status, body, _ = mesh.request(port, "GET", path, jwt, None, 10)
        seen.append(f"{status} {label}")
        require(want is None or status == want, f"round {round_no}: {label}: {status}, expected {want}\n{body[:300]}")

    for _ in range(3):
        send(alice, "/api/4.0/dashboards/1", "alice dashboard (allowed; shadow would deny)", 200)
    send(eve, "/api/4.0/dashboards/1", "eve dashboard (forbidden)", 403)
    send("", "/api/4.0/dashboards/1", "no token", 401)
    send("not-a-jwt", "/api/4.0/dashboards/1", "malformed token", 401)
    send(alice, "/api/4.0/no_such_thing", "unknown operation", 404)
    for _ in range(4):
        send(bob, "/api/4.0/looks/1", "bob look (viewer, 2 allowed then rate limited)")
    if round_no == 1:
        # Looker refuses the next API call with 401: the filter drops alice's token, and
        # round 2 fetches a new one (a broker call and a Looker login after the first scrape).
        require(http("POST", f"http://{stack.sim}/__sim/faults", {"api_status": 401, "count": 1})[0] == 204, "sim faults")
        send(alice, "/api/4.0/dashboards/1", "alice dashboard (Looker answers 401)", 401)
        # The broker's Looker logins fail: carol's token (a user identity) cannot be had.
        require(http("POST", f"http://{stack.sim}/__sim/faults", {"login_status": 503, "count": 50})[0] == 204, "sim faults")
        send(token("carol"), "/api/4.0/dashboards/1", "carol dashboard (broker cannot log in)", 503)
        require(http("DELETE", f"http://{stack.sim}/__sim/faults")[0] == 204, "sim faults cleared")
        # An unknown kid makes the filter refetch the IdP's keys, which fails (IdP 500).
        require(http("POST", f"http://{stack.idp}/__idp/fail", {"mode": "500"})[0] in (200, 204), "IdP fail mode")
        send(token("alice", kid="rotated-away"), "/api/4.0/dashboards/1", "unknown kid (refetch fails)")
        require(http("POST", f"http://{stack.idp}/__idp/fail", {"mode": "ok"})[0] in (200, 204), "IdP ok mode")
    return seen


def prometheus_families(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^# TYPE (\S+) ", text, re.M)}


def targets(dashboard: dict):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def check_dashboard_text(dashboard: dict) -> list[str]:
    problems = []
    for panel, target in targets(dashboard):
        if "__name__" in target["expr"]:
            problems.append(f"{panel['title']} / {target['refId']}: selects on __name__ (labels carry the variable parts)")
    return problems


def describe(result: list[dict], legend: str) -> str:
    parts = []
    for r in result[:6]:
        name = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: r["metric"].get(m.group(1), ""), legend) or "value"
        parts.append(f"{name}={float(r['value'][1]):.3g}")
    return ", ".join(parts) + (f", ... ({len(result)} series)" if len(result) > 6 else "")


def run(log=print) -> tuple[list[str], list[str]]:
    """The failures; logs one line per step and per panel target."""
    for path in (mesh.ENVOY, mesh.WASM, mesh.BROKER, mesh.SIM, mesh.IDP):
        require(path.exists(), f"{path} is missing (make wasm envoy test-bins, or set LOOKERGATE_*)")
    require(Path(PROMETHEUS).exists(), f"{PROMETHEUS} is missing (apt-get install prometheus, or set LOOKERGATE_PROMETHEUS)")
    dashboard = json.loads(DASHBOARD.read_text())
    failures = check_dashboard_text(dashboard)
    with tempfile.TemporaryDirectory(prefix="lookergate-dashboard-") as tmp_name:
        tmp = Path(tmp_name)
        stack = Stack(tmp)
        try:
            deadline = time.monotonic() + READY_DEADLINE_S
            base_id = 41000 + os.getpid() % 1000 * 10
            envoy = mesh.Envoy(stack, "demo", stack.envoy_config(), base_id)
            merged = MergedEnvoy(stack, base_id + 1)
            envoy.wait_ready(deadline)
            admin = envoy.admin_path.read_text().strip()
            mesh.wait_for_keys(envoy, token("alice"), deadline)
            prometheus = Prometheus(stack, admin)
            prometheus.wait_ready(deadline)
            # The rotation due at start has run (and its reload): the login faults below
            # must not meet it.
            while time.monotonic() < deadline and "rotations_total{" not in http("GET", f"http://{stack.broker}/metrics")[1]:
                time.sleep(0.2)
            stack.broker_proc.send_signal(signal.SIGHUP)  # one more reload (unchanged)
            log(f"stack up: Envoy admin {admin}, broker {stack.broker}, Prometheus {prometheus.url}")
            started = time.time()
            lines = drive_traffic(stack, envoy.port, 1)
            prometheus.wait_scraped_after(time.time() + SCRAPE_INTERVAL_S, time.monotonic() + 15)
            lines += drive_traffic(stack, envoy.port, 2)
            log(f"traffic: {len(lines)} requests in 2 rounds: " + "; ".join(sorted(set(lines))))
            prometheus.wait_scraped_after(time.time(), time.monotonic() + 15)
            log(f"scraped every {SCRAPE_INTERVAL_S}s for {time.time() - started:.1f}s of traffic")

            exported = http("GET", f"http://{admin}/stats/prometheus")[1]
            extra = {f for f in prometheus_families(exported) if f.startswith("lookergate_")} - GATEWAY_FAMILIES
            if extra:
                failures.append(f"Envoy exports lookergate metrics with a variable part in the name (a stats tag missing?): {sorted(extra)}")
            stats = http("GET", f"http://{admin}/stats?filter=wasmcustom")[1]
            if not re.search(r"^wasmcustom\.lookergate\.decision\.deny\.forbidden: [1-9]", stats, re.M):
                failures.append(f"/stats no longer shows the filter's full names (e2e tests read them):\n{stats[:1000]}")

            merged.wait_ready(deadline)
            mesh.wait_for_keys(merged, token("alice"), deadline)
            mesh.request(merged.port, "GET", "/api/4.0/dashboards/1", token("eve"), None, 10)
            merged_text = http("GET", f"http://{merged.admin_path.read_text().strip()}/stats/prometheus")[1]
            wanted = ['lookergate_decision{verdict="deny",reason="forbidden"}', 'platform_cluster="looker"']
            missing = [w for w in wanted if w not in merged_text]
            if missing:
                failures.append(f"the platform merge (--config-yaml envoy/stats-tags.yaml over a bootstrap with its own tags) lacks {missing}")
            else:
                log("platform merge: a bootstrap with its own stats tags plus envoy/stats-tags.yaml as --config-yaml has both")

            for panel, target in targets(dashboard):
                label = f"{panel['title']} / {target['refId']}"
                expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                answer = prometheus.query(expr)
                if answer.get("status") != "success":
                    failures.append(f"{label}: {expr}\n  error: {answer.get('errorType')}: {answer.get('error')}")
                    log(f"FAIL {label}: error {answer.get('error')}")
                    continue
                result = answer["data"]["result"]
                finite = [r for r in result if not math.isnan(float(r["value"][1]))]
                if finite:
                    log(f"ok   {label}: {describe(finite, target.get('legendFormat', ''))}")
                    continue
                why = "empty" if not result else "only NaN"
                failures.append(f"{label}: {expr}\n  {why}: {result}")
                log(f"FAIL {label}: {why}")
        except Failed as e:
            failures.append(f"{e}\n--- envoy ---\n{(tmp / 'demo.envoy.log').read_text()[-1500:] if (tmp / 'demo.envoy.log').exists() else ''}"
                            f"\n--- broker ---\n{stack.log('broker')}")
        finally:
            stack.stop()
    return failures


def main() -> int:
    return mesh.report(run)


if __name__ == "__main__":
    sys.exit(main())
