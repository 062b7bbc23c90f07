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


def parse(specs):
    variants = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        fields = rest.split("|", 3)
        if not name or len(fields) != 4:
            raise SystemExit(f"ab: bad variant {spec!r}; see the docstring")
        wasm, kind, pool, overrides = fields
        variants.append((name, Path(wasm) if wasm else None, kind, pool, json.loads(overrides or "{}")))
    return variants


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    rounds, variants = int(sys.argv[1]), parse(sys.argv[2:])
    os.chdir(bench.ROOT)
    paths = bench.load_or_make_keys()
    jwks_doc = bench.jwks(paths)
    pools = bench.token_pools(paths)
    procs, broker_addr = bench.start_backends([])
    results = {v[0]: [] for v in variants}
    try:
        for rnd in range(rounds):
            for name, wasm, kind, pool, overrides in variants if rnd % 2 == 0 else variants[::-1]:
                envoy = bench.Envoy(f"ab-{name}", kind, jwks_doc, broker_addr, wasm=wasm, overrides=overrides)
                try:
                    row = bench.throughput(envoy, name, pools, pool)
                finally:
                    envoy.stop()
                results[name].append(row)
                print(f"ab: round {rnd + 1} {name}: {row['cpu_us_per_req']:.1f} µs/req, {row['rps']:.0f} req/s, "
                      f"RSS {row['rss_mb']:.1f} MB, ready {row['ready_s']:.2f} s, non-2xx {row['non_2xx']}", flush=True)
    finally:
        for proc in procs:
            proc.kill()
    for name, rows in results.items():
        us = [r["cpu_us_per_req"] for r in rows]
        med = {k: statistics.median(r[k] for r in rows) for k in ("rps", "rss_mb", "ready_s")}
        print(f"{name}: median {statistics.median(us):.1f} µs/req ({min(us):.1f}–{max(us):.1f}), "
              f"{med['rps']:.0f} req/s, RSS {med['rss_mb']:.1f} MB, ready {med['ready_s']:.2f} s")


if __name__ == "__main__":
    main()
