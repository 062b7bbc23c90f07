#!/usr/bin/env python3
"""Paired A/B runs for a change to the filter: CPU µs per request, req/s, RSS and ready
time of a few variants, interleaved round by round, on the bench's Envoy setup.

`make bench` compares lookergate with Envoy's own options; this compares lookergate
with itself (two builds, two plugin settings, or the no-op filter making chosen
hostcalls), which is how the figures in RESULTS.md's analysis were taken. It reuses
bench.py (token pools, broker, simulator, Envoy configs); run `make bench` once first so
the binaries and pools exist.

    python3 bench/ab.py ROUNDS NAME=WASM|KIND|POOL|OVERRIDES ...

  WASM       a lookergate.wasm to load ("" = target/wasm32-wasip1/release/lookergate.wasm)
  KIND       lookergate | floor | floor:OPS (the no-op filter making OPS, see
             bench/noop-filter/src/lib.rs) | limit | native-cache | native-nocache
  POOL       warm | cold-RS256 | cold-ES256 | cold-EdDSA
  OVERRIDES  JSON merged over the plugin configuration's top level ("" = none)

Example: the shipped build against one in /tmp, warm and cold:

    python3 bench/ab.py 3 "a=|lookergate|warm|" "b=/tmp/t/lookergate.wasm|lookergate|warm|" \\
        "a-rs=|lookergate|cold-RS256|" "b-rs=/tmp/t/lookergate.wasm|lookergate|cold-RS256|"
"""

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

WARMUP = 20


def parse(specs):
    variants = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        fields = rest.split("|", 3)
        if not name or len(fields) != 4:
            raise SystemExit(f"ab: bad variant {spec!r}; see the docstring")
        wasm, kind, pool, overrides = fields
        variants.append((name, Path(wasm) if wasm else bench.WASM, kind, pool, json.loads(overrides or "{}")))
    return variants


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    rounds, variants = int(sys.argv[1]), parse(sys.argv[2:])
    os.chdir(bench.ROOT)
    paths = bench.load_or_make_keys()
    jwks_doc = bench.jwks(paths)
    pools = {"warm": bench.token_pool("warm", "RS256", bench.WARM_POOL, paths)}
    for alg in bench.KIDS:
        pools[f"cold-{alg}"] = bench.token_pool(f"cold-{alg}", alg, bench.POOL, paths)
    sim, sim_addr = bench.start_service(bench.SIM)
    broker, broker_addr = bench.start_service(bench.BROKER, {"LOOKERGATE_BROKER_LOOKER_URL": f"http://{sim_addr}"})
    plugin_config, shipped_wasm = bench.lookergate_plugin_config, bench.WASM
    results = {v[0]: [] for v in variants}
    try:
        for rnd in range(rounds):
            for name, wasm, kind, pool, overrides in variants if rnd % 2 == 0 else variants[::-1]:
                bench.lookergate_plugin_config = lambda doc, o=overrides: {**plugin_config(doc), **o}
                bench.WASM = wasm
                envoy = bench.Envoy(f"ab-{name}", kind, jwks_doc, broker_addr)
                try:
                    warm = bench.first_token(pools["warm"])
                    status = [envoy.get(warm) for _ in range(WARMUP)][-1]
                    cpu0 = envoy.cpu_seconds()
                    load = bench.wrk(envoy.port, pools[pool], bench.CONNECTIONS, bench.DURATION)
                    cpu = envoy.cpu_seconds() - cpu0
                    row = {"us": cpu / max(1, load["requests"]) * 1e6, "rps": load["requests"] / load["seconds"],
                           "rss": envoy.rss_mb(), "ready": envoy.ready_s, "status": status, "non2xx": load["non2xx"]}
                finally:
                    envoy.stop()
                    bench.lookergate_plugin_config, bench.WASM = plugin_config, shipped_wasm
                results[name].append(row)
                print(f"ab: round {rnd + 1} {name}: {row['us']:.1f} µs/req, {row['rps']:.0f} req/s, "
                      f"RSS {row['rss']:.1f} MB, ready {row['ready']:.2f} s, warm-up status {status}, "
                      f"non-2xx {row['non2xx']}", flush=True)
    finally:
        broker.kill()
        sim.kill()
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("us", "rps", "rss", "ready")}
        print(f"{name}: median {med['us']:.1f} µs/req ({min(r['us'] for r in rows):.1f}–"
              f"{max(r['us'] for r in rows):.1f}), {med['rps']:.0f} req/s, RSS {med['rss']:.1f} MB, "
              f"ready {med['ready']:.2f} s")


if __name__ == "__main__":
    main()
