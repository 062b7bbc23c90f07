#!/usr/bin/env python3
"""`make bench`: lookergate side by side with bare Envoy, a no-op Wasm filter and Envoy's
native jwt_authn + rbac, on loopback, with wrk. Writes bench/results.json,
bench/RESULTS.md (figures section) and bench/ratios.svg.

Every configuration runs in its own Envoy (one worker, pinned to one core; wrk on the
other), started fresh for each run so caches start empty, in interleaved rounds.
Knobs (environment): BENCH_ROUNDS, BENCH_DURATION, BENCH_CONNECTIONS, BENCH_RATE,
BENCH_LATENCY_DURATION, BENCH_POOL, BENCH_ONLY (comma-separated configuration names),
BENCH_WASM (another lookergate.wasm), BENCH_GEN_ONLY=1 (only sign the token pools).
"""

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = BENCH / "work"
# The real binary: `.venv/bin/envoy` is a Python wrapper (slower start, wrong PID to measure).
ENVOY = next(iter(sorted(ROOT.glob(".venv/lib/python3*/site-packages/envoy/_bin/envoy"))), ROOT / ".venv/bin/envoy")
WASM = Path(os.environ.get("BENCH_WASM", ROOT / "target/wasm32-wasip1/release/lookergate.wasm"))
NOOP_WASM = ROOT / "target/wasm32-wasip1/release/lookergate_noop_filter.wasm"
BROKER = ROOT / "target/release/lookergate-broker"
SIM = ROOT / "target/release/lookergate-looker-sim"
RLS = ROOT / "target/release/lookergate-ratelimit"
REDIS = Path(shutil.which("redis-server") or "/usr/bin/redis-server")
# The rate limit service's address, set by start_backends when a global configuration runs.
RLS_ADDR = None

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DURATION = int(os.environ.get("BENCH_DURATION", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
RATE = int(os.environ.get("BENCH_RATE", "1000"))  # req/s for the latency runs
LATENCY_DURATION = int(os.environ.get("BENCH_LATENCY_DURATION", "4"))
POOL = int(os.environ.get("BENCH_POOL", "120000"))
WARM_POOL = 200
ONLY = [s for s in os.environ.get("BENCH_ONLY", "").split(",") if s]
# Which block of RESULTS.md (and which results file) a run writes: a partial run (`make
# bench-global`) has its own block, so it never replaces the full run's figures.
BLOCK = os.environ.get("BENCH_BLOCK", "figures")
ENVOY_CPU, CLIENT_CPU = "1", "0"

ISS = "https://idp.bench.lookergate.test"
AUD = "looker-api"
PATH = "/api/4.0/dashboards/1"
STATIC_LOOKER_TOKEN = "static-looker-token-for-the-native-peer"
KIDS = {"RS256": "bench-rs256", "ES256": "bench-es256", "EdDSA": "bench-ed25519"}

# The hostcalls lookergate makes on an allowed warm request (bench/noop-filter's op names):
# the request header block, the time, 2 counters, 7 audit properties, the Looker
# `authorization` header, the response `:status`.
HOSTCALLS = "pairs,time,metric,metric,prop,prop,prop,prop,prop,prop,prop,auth,status"

# name -> (Envoy kind, token pool, what it stands for)
CONFIGS = {
    "limit": ("limit", "warm", "Envoy passthrough, no auth"),
    "floor": ("floor", "warm", "no-op proxy-wasm filter"),
    "floor-hostcalls": ("floor:" + HOSTCALLS, "warm",
                        "the no-op filter making lookergate's warm-path hostcalls and nothing else"),
    "native-cache-warm": ("native-cache", "warm", "jwt_authn with jwt_cache_config + rbac, warm tokens"),
    "native-nocache-rs256": ("native-nocache", "cold-RS256", "jwt_authn without cache + rbac, never-seen RS256"),
    "native-nocache-es256": ("native-nocache", "cold-ES256", "jwt_authn without cache + rbac, never-seen ES256"),
    "native-nocache-eddsa": ("native-nocache", "cold-EdDSA", "jwt_authn without cache + rbac, never-seen EdDSA"),
    "lookergate-warm": ("lookergate", "warm", "lookergate, pool of 200 tokens reused"),
    "lookergate-warm-global": ("lookergate-global", "warm",
                               "lookergate-warm with a global rate limit on its rule (RLS v3 on Redis, never over)"),
    "lookergate-cold-rs256": ("lookergate", "cold-RS256", "lookergate, never-seen RS256-2048 per request"),
    "lookergate-cold-es256": ("lookergate", "cold-ES256", "lookergate, never-seen ES256 per request"),
    "lookergate-cold-eddsa": ("lookergate", "cold-EdDSA", "lookergate, never-seen EdDSA per request"),
}


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- keys and tokens

def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_or_make_keys():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    WORK.mkdir(parents=True, exist_ok=True)
    paths = {alg: WORK / f"{alg}.pem" for alg in KIDS}
    makers = {
        "RS256": lambda: rsa.generate_private_key(65537, 2048),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": lambda: ed25519.Ed25519PrivateKey.generate(),
    }
    for alg, path in paths.items():
        if not path.exists():
            pem = makers[alg]().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            path.write_bytes(pem)
    return paths


def jwks(paths):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    keys = []
    for alg, path in paths.items():
        key = serialization.load_pem_private_key(path.read_bytes(), None).public_key()
        if isinstance(key, rsa.RSAPublicKey):
            n = key.public_numbers().n
            jwk = {"kty": "RSA", "n": b64(n.to_bytes((n.bit_length() + 7) // 8, "big")), "e": "AQAB"}
        elif isinstance(key, ec.EllipticCurvePublicKey):
            nums = key.public_numbers()
            jwk = {"kty": "EC", "crv": "P-256", "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}
        else:
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        jwk.update({"kid": KIDS[alg], "alg": alg, "use": "sig"})
        keys.append(jwk)
    return {"keys": keys}


def sign_batch(job):
    """Signs `count` tokens starting at `start` (runs in a worker process)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    alg, pem_path, start, count, now, tag = job
    key = serialization.load_pem_private_key(Path(pem_path).read_bytes(), None)
    header = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": KIDS[alg]}, separators=(",", ":")).encode())
    out = []
    for i in range(start, start + count):
        user = f"user{i % 500}"
        claims = {
            "iss": ISS, "aud": AUD, "sub": user, "email": f"{user}@example.com", "groups": ["analysts"],
            "iat": now, "exp": now + 2 * 86400, "jti": f"{tag}-{i}-{secrets.token_hex(4)}",
        }
        signing_input = header + "." + b64(json.dumps(claims, separators=(",", ":")).encode())
        data = signing_input.encode()
        if alg == "RS256":
            sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256":
            r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            sig = key.sign(data)
        out.append(signing_input + "." + b64(sig))
    return out


def token_pool(name, alg, size, paths):
    """A file of `size` tokens, one a line; regenerated when missing, short or old."""
    path = WORK / f"pool-{name}.txt"
    if path.exists() and time.time() - path.stat().st_mtime < 86400:
        if sum(1 for _ in path.open()) >= size:
            return path
    log(f"signing {size} {alg} tokens for pool {name} ...")
    now = int(time.time())
    step = max(1, size // 8)
    jobs = [(alg, str(paths[alg]), s, min(step, size - s), now, name) for s in range(0, size, step)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        tokens = [t for batch in pool.map(sign_batch, jobs) for t in batch]
    path.write_text("\n".join(tokens) + "\n")
    return path


# ---------------------------------------------------------------- processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(binary, env=None, args=()):
    proc = subprocess.Popen(
        ["taskset", "-c", CLIENT_CPU, str(binary), "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}, text=True,
    )
    line = proc.stdout.readline()
    m = re.match(r"listening on (\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"bench: {binary} did not start: {line!r}")
    return proc, m.group(1)


def lookergate_plugin_config(jwks_doc):
    """The demo's plugin configuration with the bench issuer in place of the demo's."""
    demo = yaml.safe_load((ROOT / "envoy/demo.yaml").read_text())
    hcm = demo["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    config = json.loads(wasm["typed_config"]["config"]["configuration"]["value"])
    issuer = dict(config["issuers"][0])
    # The bench's keys are inline: drop however the demo fetches its own.
    for remote in ("jwks_uri", "discovery", "cluster", "jwks_refresh", "jwks_max_stale", "unknown_kid_refetch"):
        issuer.pop(remote, None)
    issuer.update({"issuer": ISS, "audiences": [AUD], "jwks": jwks_doc, "algorithms": list(KIDS)})
    config["issuers"] = [issuer]
    return config


def envoy_config(kind, port, admin_port, jwks_doc, broker_addr, wasm=None, overrides=None):
    """`wasm` and `overrides` (merged over the plugin JSON's top level) change lookergate's
    build and settings (`bench/ab.py`)."""
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    filters = []
    clusters = []
    if kind == "floor" or kind.startswith("floor:"):
        # "floor:OPS": the no-op filter making those hostcalls (bench/noop-filter/src/lib.rs).
        filters.append(wasm_filter("noop", NOOP_WASM, kind.partition(":")[2] or "{}"))
    elif kind.startswith("native"):
        provider = {
            "issuer": ISS, "audiences": [AUD], "local_jwks": {"inline_string": json.dumps(jwks_doc)},
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "payload_in_metadata": "jwt_payload", "forward": False,
        }
        if kind == "native-cache":
            provider["jwt_cache_config"] = {"jwt_cache_size": 10000}
        filters.append({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"bench": provider},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
            },
        })
        filters.append({
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "ALLOW", "policies": {"analysts-read": {
                    "permissions": [{"and_rules": {"rules": [
                        {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                        {"url_path": {"path": {"prefix": "/api/4.0/dashboards/"}}},
                    ]}}],
                    "principals": [{"metadata": {
                        "filter": "envoy.filters.http.jwt_authn",
                        "path": [{"key": "jwt_payload"}, {"key": "groups"}],
                        "value": {"list_match": {"one_of": {"string_match": {"exact": "analysts"}}}},
                    }}],
                }}},
            },
        })
        route["request_headers_to_add"] = [{
            "header": {"key": "authorization", "value": f"token {STATIC_LOOKER_TOKEN}"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }]
    elif kind in ("lookergate", "lookergate-global"):
        config = {**lookergate_plugin_config(jwks_doc), **(overrides or {})}
        if kind == "lookergate-global":
            global_limit(config, clusters)
        filters.append(wasm_filter("lookergate", wasm or WASM, json.dumps(config)))
        host, bport = broker_addr.rsplit(":", 1)
        clusters.append({
            "name": config["broker"]["cluster"], "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": config["broker"]["cluster"], "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(bport)}}}}]}]},
        })
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{"name": "bench", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "route_config": {"name": "bench", "virtual_hosts": [{"name": "bench", "domains": ["*"], "routes": [route]}]},
                        "http_filters": filters,
                    },
                }]}]}],
            "clusters": clusters,
        },
    }


def global_limit(config, clusters):
    """The rule that grants the bench's request (analysts-read) gets a global rate limit
    far above the bench's rate: every request asks the RLS (and Redis), none is refused."""
    rules = config["policy"]["rules"] if "policy" in config else config["rules"]
    rule = next(r for r in rules if r.get("name") == "analysts-read")
    rule["rate_limit"] = {"scope": "global", "per_second": 100000, "burst": 100000}
    config["rate_limit_service"] = {"cluster": "lookergate_rls", "domain": "lookergate", "timeout": "200ms"}
    host, port = RLS_ADDR.rsplit(":", 1)
    clusters.append({
        "name": "lookergate_rls", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "lookergate_rls", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}]}]},
    })


def wasm_filter(name, path, configuration):
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name, "root_id": name, "failure_policy": "FAIL_CLOSED",
            "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(path)}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
        },
    }}


class Envoy:
    def __init__(self, name, kind, jwks_doc, broker_addr, concurrency=1, wasm=None, overrides=None):
        self.port, self.admin = free_port(), free_port()
        self.config = WORK / f"envoy-{name}.json"
        self.config.write_text(json.dumps(envoy_config(kind, self.port, self.admin, jwks_doc, broker_addr, wasm, overrides), indent=1))
        self.log = WORK / f"envoy-{name}.log"
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ["taskset", "-c", ENVOY_CPU, str(ENVOY), "-c", str(self.config), "--concurrency", str(concurrency),
             "--use-dynamic-base-id", "--log-level", "info", "--disable-hot-restart"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
        )
        deadline = t0 + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: Envoy {name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"bench: Envoy {name} not ready in 30s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.01)
        self.ready_s = time.monotonic() - t0

    def get(self, token):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{PATH}", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wrk(port, pool, connections, duration, delay_ms=0):
    script = BENCH / "pool.lua"
    if delay_ms:
        script = WORK / "pool-paced.lua"
        script.write_text((BENCH / "pool.lua").read_text() + "\nfunction delay()\n  return delay_ms\nend\n")
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
           "-s", str(script), f"http://127.0.0.1:{port}{PATH}", "--", str(pool), str(delay_ms)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.M)
    if not m:
        raise SystemExit(f"bench: wrk failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(m.group(1))


# ---------------------------------------------------------------- runs

POOL_SIZES = {}


def first_token(pool):
    with pool.open() as f:
        return f.readline().strip()


def throughput(envoy, name, pools, pool_name, sanity=None):
    """Warm-up, then wrk at CONNECTIONS for DURATION: req/s, Envoy's CPU per request, RSS."""
    warm_token = first_token(pools["warm"])
    # Warm-up with a warm token: the Looker token gets cached, the VM is hot.
    statuses = [envoy.get(warm_token) for _ in range(20)]
    if statuses[-1] != 200:
        raise SystemExit(f"bench: {name}: warm-up answered {statuses}; see {envoy.log}")
    if sanity is not None:
        sanity(envoy)
    cpu0 = envoy.cpu_seconds()
    load = wrk(envoy.port, pools[pool_name], CONNECTIONS, DURATION)
    cpu = envoy.cpu_seconds() - cpu0
    return {
        "rps": load["requests"] / load["seconds"], "requests": load["requests"], "non_2xx": load["non2xx"],
        "errors": load["errors"],
        "cpu_us_per_req": 1e6 * cpu / max(1, load["requests"]), "rss_mb": envoy.rss_mb(), "ready_s": envoy.ready_s,
        "p50_ms_saturated": load["p50_us"] / 1000, "p99_ms_saturated": load["p99_us"] / 1000,
    }


def run_one(name, pools, jwks_doc, broker_addr, sanity=None):
    kind, pool_name, _ = CONFIGS[name]
    envoy = Envoy(name, kind, jwks_doc, broker_addr)
    try:
        result = throughput(envoy, name, pools, pool_name, sanity)
        paced = wrk(envoy.port, pools[pool_name], max(1, RATE // 100), LATENCY_DURATION, delay_ms=10)
        return {
            **result,
            # Warm pools are reused on purpose; a cold pool must never wrap (tokens would repeat).
            "wrapped": pool_name.startswith("cold") and result["requests"] > POOL_SIZES[pool_name],
            "latency_rate_rps": paced["requests"] / paced["seconds"],
            "p50_ms": paced["p50_us"] / 1000, "p99_ms": paced["p99_us"] / 1000,
        }
    finally:
        envoy.stop()


def sanity_check(pools, jwks_doc, broker_addr, paths):
    """Envoy's host crypto and the pure-Rust path agree: valid tokens pass, tampered fail."""
    envoy = Envoy("sanity", "lookergate", jwks_doc, broker_addr)
    try:
        results = {}
        for alg in KIDS:
            token = first_token(pools[f"cold-{alg}"])
            head, payload, sig = token.split(".")
            raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
            raw[-1] ^= 1
            tampered = f"{head}.{payload}.{b64(bytes(raw))}"
            results[alg] = {"valid": envoy.get(token), "tampered": envoy.get(tampered)}
        # The high-S twin of an ES256 signature is valid for BoringSSL and RustCrypto alike.
        n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        head, payload, sig = first_token(pools["cold-ES256"]).split(".")
        raw = base64.urlsafe_b64decode(sig + "==")
        s = int.from_bytes(raw[32:], "big")
        high = f"{head}.{payload}.{b64(raw[:32] + (n - s).to_bytes(32, 'big'))}"
        results["ES256-high-S"] = {"valid": envoy.get(high)}
        log_text = envoy.log.read_text()
        m = re.search(r"host signature verification for \[([^\]]*)\]", log_text)
        host_algs = [a.strip() for a in m.group(1).split(",")] if m and m.group(1) else []
        return {"statuses": results, "host_algorithms": host_algs}
    finally:
        envoy.stop()


def extra_memory(pools, jwks_doc, broker_addr):
    """RSS with a second worker, after the same warm-up."""
    out = {}
    for workers in (1, 2):
        envoy = Envoy(f"mem-{workers}", "lookergate", jwks_doc, broker_addr, concurrency=workers)
        try:
            token = first_token(pools["warm"])
            for _ in range(50):
                envoy.get(token)
            out[f"lookergate_rss_mb_{workers}_workers"] = envoy.rss_mb()
        finally:
            envoy.stop()
    for workers in (1, 2):
        envoy = Envoy(f"mem-limit-{workers}", "limit", jwks_doc, broker_addr, concurrency=workers)
        try:
            for _ in range(50):
                envoy.get(first_token(pools["warm"]))
            out[f"limit_rss_mb_{workers}_workers"] = envoy.rss_mb()
        finally:
            envoy.stop()
    return out


def summarize(runs):
    def stats(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}
    out = {}
    for name, rs in runs.items():
        out[name] = {k: stats([r[k] for r in rs]) for k in
                     ("rps", "cpu_us_per_req", "rss_mb", "ready_s", "p50_ms", "p99_ms", "latency_rate_rps",
                      "p50_ms_saturated", "p99_ms_saturated")}
        out[name]["non_2xx"] = sum(r["non_2xx"] for r in rs)
        out[name]["errors"] = sum(r["errors"] for r in rs)
        out[name]["pool_wrapped"] = any(r["wrapped"] for r in rs)
        out[name]["rps_per_round"] = [round(r["rps"]) for r in rs]
    return out


def ratios(summary):
    def r(a, b):
        if a in summary and b in summary:
            return summary[a]["rps"]["median"] / summary[b]["rps"]["median"]
        return None
    return {
        "floor/limit": r("floor", "limit"),
        "warm/floor": r("lookergate-warm", "floor"),
        "floor-hostcalls/floor": r("floor-hostcalls", "floor"),
        "warm/floor-hostcalls": r("lookergate-warm", "floor-hostcalls"),
        "warm/native-cache": r("lookergate-warm", "native-cache-warm"),
        "warm/limit": r("lookergate-warm", "limit"),
        "cold-rs256/native-nocache-rs256": r("lookergate-cold-rs256", "native-nocache-rs256"),
        "cold-es256/native-nocache-es256": r("lookergate-cold-es256", "native-nocache-es256"),
        "cold-eddsa/native-nocache-eddsa": r("lookergate-cold-eddsa", "native-nocache-eddsa"),
        "native-cache/floor": r("native-cache-warm", "floor"),
        "warm-global/warm": r("lookergate-warm-global", "lookergate-warm"),
    }


TARGETS = {
    "warm/floor": 0.95,
    "cold-rs256/native-nocache-rs256": 1.0,
    "cold-es256/native-nocache-es256": 1.0,
    "cold-eddsa/native-nocache-eddsa": 0.5,
}


def svg_chart(rat, path):
    rows = [(k, v) for k, v in rat.items() if v is not None]
    width, bar_h, left = 760, 26, 300
    scale = (width - left - 60) / max(1.2, max(v for _, v in rows))
    height = 40 + bar_h * len(rows) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
             f'<text x="10" y="22" font-size="15" font-weight="bold">lookergate make bench: req/s ratios (median of rounds)</text>']
    x1 = left + scale * 1.0
    for i, (k, v) in enumerate(rows):
        y = 36 + i * bar_h
        target = TARGETS.get(k)
        color = "#4c9a2a" if target is None or v >= target else "#c0392b"
        if target is None:
            color = "#7f8c8d"
        parts.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{k}</text>')
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{scale * v:.1f}" height="{bar_h - 8}" fill="{color}"/>')
        parts.append(f'<text x="{left + scale * v + 4:.1f}" y="{y + 17}">{v:.2f}x</text>')
        if target is not None:
            tx = left + scale * target
            parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{y + 1}" y2="{y + bar_h - 1}" stroke="black" stroke-dasharray="3,2"/>')
    parts.append(f'<line x1="{x1:.1f}" x2="{x1:.1f}" y1="30" y2="{height - 24}" stroke="#999"/>')
    parts.append(f'<text x="10" y="{height - 8}" fill="#555">green: meets target (dashed line); red: misses; grey: context. 1.0x line in grey.</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def markdown(result):
    s, rat = result["summary"], result["ratios"]
    lines = ["<!-- generated by bench/bench.py; edit the analysis sections in RESULTS.md, not this block -->",
             f"Run {result['started']} · {result['machine']} · Envoy {result['envoy_version']} · "
             f"{ROUNDS} rounds × {DURATION}s at {CONNECTIONS} connections (wrk, 1 thread) · "
             f"latency at ~{RATE} req/s for {LATENCY_DURATION}s · lookergate.wasm {result['wasm_bytes']} bytes",
             "", "| configuration | req/s median (range) | CPU µs/req | RSS MB | ready s | p50 / p99 ms @ ~%d req/s | non-2xx |" % RATE,
             "|---|---|---|---|---|---|---|"]
    for name in s:
        r = s[name]
        lines.append(
            f"| {name} | {r['rps']['median']:.0f} ({r['rps']['min']:.0f}–{r['rps']['max']:.0f}) "
            f"| {r['cpu_us_per_req']['median']:.0f} | {r['rss_mb']['median']:.1f} | {r['ready_s']['median']:.2f} "
            f"| {r['p50_ms']['median']:.2f} / {r['p99_ms']['median']:.2f} | {r['non_2xx']}{' (pool wrapped)' if r['pool_wrapped'] else ''} |")
    lines += ["", "| ratio (req/s medians) | value | target |", "|---|---|---|"]
    for k, v in rat.items():
        if v is None:
            continue  # a configuration of the ratio did not run (BENCH_ONLY)
        t = TARGETS.get(k)
        verdict = "" if t is None else (" ✅" if v is not None and v >= t else " ❌")
        lines.append(f"| {k} | {'n/a' if v is None else f'{v:.2f}x'} | {'' if t is None else f'≥ {t}x'}{verdict} |")
    limit = s.get("limit")
    if limit:
        lines += ["", "CPU µs per request above the limit: " + ", ".join(
            f"{n} {s[n]['cpu_us_per_req']['median'] - limit['cpu_us_per_req']['median']:.0f}" for n in s if n != "limit")]
        lines.append("RSS above the limit (MB): " + ", ".join(
            f"{n} {s[n]['rss_mb']['median'] - limit['rss_mb']['median']:.1f}" for n in s if n != "limit"))
    warm, glob = s.get("lookergate-warm"), s.get("lookergate-warm-global")
    if warm and glob:
        cpu = glob["cpu_us_per_req"]["median"] / warm["cpu_us_per_req"]["median"]
        p99 = glob["p99_ms"]["median"] - warm["p99_ms"]["median"]
        lines.append(f"Global rate limit on the warm path: Envoy CPU per request {cpu:.2f}x lookergate-warm's "
                     f"(target ≤ 1.5x{' ✅' if cpu <= 1.5 else ' ❌'}), p99 {p99:+.2f} ms at ~{RATE} req/s "
                     f"(target ≤ +1 ms{' ✅' if p99 <= 1.0 else ' ❌'}); the RLS and Redis run on the client CPU.")
    mem = result.get("memory", {})
    if mem:
        lines.append("Idle-ish RSS after 50 requests (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()))
    san = result.get("sanity", {})
    if san:
        lines.append(f"Sanity (through Envoy): host-verified algorithms {san['host_algorithms']}; statuses {json.dumps(san['statuses'])}")
    return "\n".join(lines) + "\n"


def token_pools(paths):
    """The warm pool and one cold pool per algorithm (signed once, cached in bench/work/)."""
    pools = {"warm": token_pool("warm", "RS256", WARM_POOL, paths)}
    for alg in KIDS:
        pools[f"cold-{alg}"] = token_pool(f"cold-{alg}", alg, POOL, paths)
    return pools


def start_backends(names):
    """The Looker simulator and the broker in front of it, and for a global configuration
    Redis and the rate limit service: (processes to stop, broker address)."""
    global RLS_ADDR
    sim, sim_addr = start_service(SIM)
    broker, broker_addr = start_service(BROKER, {"LOOKERGATE_BROKER_LOOKER_URL": f"http://{sim_addr}"})
    procs = [broker, sim]
    if any(CONFIGS[n][0] == "lookergate-global" for n in names):
        redis_port = free_port()
        redis_dir = WORK / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        redis = subprocess.Popen(
            ["taskset", "-c", CLIENT_CPU, str(REDIS), "--port", str(redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(redis_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", redis_port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("bench: redis-server did not start")
                time.sleep(0.05)
        rls, RLS_ADDR = start_service(RLS, args=("--redis", f"redis://127.0.0.1:{redis_port}"))
        procs.insert(0, rls)
    return procs, broker_addr


def main():
    for f in (ENVOY, WASM, NOOP_WASM, BROKER, SIM, RLS, REDIS):
        if not f.exists():
            raise SystemExit(f"bench: {f} is missing; run `make bench`")
    WORK.mkdir(parents=True, exist_ok=True)
    paths = load_or_make_keys()
    jwks_doc = jwks(paths)
    pools = token_pools(paths)
    for name, path in pools.items():
        POOL_SIZES[name] = sum(1 for _ in path.open())
    if os.environ.get("BENCH_GEN_ONLY"):
        return

    names = [n for n in CONFIGS if not ONLY or n in ONLY]
    procs, broker_addr = start_backends(names)
    runs = {n: [] for n in names}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        sanity = sanity_check(pools, jwks_doc, broker_addr, paths) if any("lookergate" in n for n in names) else {}
        if sanity:
            log("sanity:", json.dumps(sanity))
        for rnd in range(ROUNDS):
            order = names if rnd % 2 == 0 else list(reversed(names))
            for name in order:
                r = run_one(name, pools, jwks_doc, broker_addr)
                runs[name].append(r)
                log(f"round {rnd + 1}/{ROUNDS} {name}: {r['rps']:.0f} req/s, {r['cpu_us_per_req']:.0f} µs CPU/req, "
                    f"p50/p99 {r['p50_ms']:.2f}/{r['p99_ms']:.2f} ms @ {r['latency_rate_rps']:.0f} req/s, "
                    f"RSS {r['rss_mb']:.1f} MB, ready {r['ready_s']:.2f}s, non-2xx {r['non_2xx']}")
        memory = extra_memory(pools, jwks_doc, broker_addr) if any("lookergate" in n for n in names) else {}
    finally:
        for proc in procs:
            proc.kill()
    summary = summarize(runs)
    envoy_version = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout.strip()
    m = re.search(r"/(\d+\.\d+\.\d+)/", envoy_version)
    result = {
        "started": started,
        "machine": f"{os.cpu_count()} CPUs, Envoy on CPU {ENVOY_CPU}, wrk/broker/sim on CPU {CLIENT_CPU}",
        "envoy_version": m.group(1) if m else envoy_version,
        "settings": {"rounds": ROUNDS, "duration_s": DURATION, "connections": CONNECTIONS, "latency_rate": RATE,
                     "latency_duration_s": LATENCY_DURATION, "pool": POOL, "warm_pool": WARM_POOL},
        "wasm_bytes": WASM.stat().st_size, "noop_wasm_bytes": NOOP_WASM.stat().st_size,
        "configs": {n: CONFIGS[n][2] for n in names},
        "summary": summary, "ratios": ratios(summary), "targets": TARGETS,
        "sanity": sanity, "memory": memory, "runs": runs,
    }
    if BLOCK == "figures":
        (BENCH / "results.json").write_text(json.dumps(result, indent=1) + "\n")
        svg_chart(result["ratios"], BENCH / "ratios.svg")
    else:
        (BENCH / f"results-{BLOCK}.json").write_text(json.dumps(result, indent=1) + "\n")
    figures = markdown(result)
    (WORK / "figures.md").write_text(figures)
    md = BENCH / "RESULTS.md"
    begin, end = f"<!-- {BLOCK}:begin -->", f"<!-- {BLOCK}:end -->"
    text = md.read_text() if md.exists() else f"# make bench results\n\n{begin}\n{end}\n"
    if begin in text and end in text:
        text = text.split(begin)[0] + begin + "\n" + figures + end + text.split(end, 1)[1]
    else:
        raise SystemExit(f"bench: {md} has no {begin} ... {end} block")
    md.write_text(text)
    print(figures)


if __name__ == "__main__":
    main()
