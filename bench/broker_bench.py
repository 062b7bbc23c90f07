#!/usr/bin/env python3
"""Broker benchmark (`make bench-broker`; issue 16): IDENTITIES distinct per-user
identities arrive at a steady rate within SECONDS against the Looker simulator, whose
logins take LOGIN_LATENCY_MS (a real Looker's take tens of milliseconds). Each identity
is asked for twice at once, as two gateways whose callouts meet the same new user would:
with two brokers (sharing a redis-server through `[store]`), once at each replica. Reports the Looker logins issued per identity
(target: one), the time to a token (p50, p99, max), each broker's CPU seconds and peak
RSS (from /proc), and writes them into bench/RESULTS.md between the broker-bench
markers.

Release builds: `cargo build --release -p lookergate-broker -p lookergate-looker-sim`.
Standard library only; Linux (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/RESULTS.md"
GATEWAY_CREDENTIAL = "demo-gateway-secret"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BEGIN, END = "<!-- BEGIN broker-bench -->", "<!-- END broker-bench -->"


class Service:
    """A native service started on port 0; reads its `listening on <addr>` line."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.log = open(log_dir / f"{name}.log", "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            self.stop()
            sys.exit(f"{name}: no `listening on` line ({line!r}); log: {log_dir / (name + '.log')}")
        self.addr = line.removeprefix("listening on ")
        # Keep draining stdout so the service never blocks on a full pipe.
        asyncio.get_event_loop().run_in_executor(None, self.proc.stdout.read)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    """Debian's redis-server on a free loopback port, no persistence."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def broker_config(bin_dir: Path, sim: str) -> str:
    demo = subprocess.run([str(bin_dir / "lookergate-broker"), "print-demo-config"], check=True, capture_output=True, text=True).stdout
    default = 'looker_url = "http://127.0.0.1:10080"'
    if default not in demo:
        sys.exit("the broker's demo config changed: no default looker_url")
    return demo.replace(default, f'looker_url = "http://{sim}"')


async def ask_token(addr: str, n: int, latencies: list[float], failures: list[str]):
    """POST /v1/token for per-user identity `user-<n>@example.com` on a new connection."""
    host, port = addr.rsplit(":", 1)
    body = json.dumps({
        "identity": {"kind": "user", "credential_type": "email", "credential_id": f"user-{n}@example.com"},
        "subject": f"user-{n}", "request_id": f"bench-{n}",
    }).encode()
    head = (f"POST /v1/token HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {GATEWAY_CREDENTIAL}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    except (OSError, asyncio.TimeoutError) as e:
        failures.append(f"user-{n}: {e!r}")
        return
    elapsed = time.perf_counter() - started
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.1 ") else b"?"
    if status != b"200" or b'"access_token"' not in answer:
        failures.append(f"user-{n}: {answer[:200]!r}")
    else:
        latencies.append(elapsed)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args, brokers_n: int) -> dict:
    bin_dir = ROOT / args.bin_dir
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp:
        tmp = Path(tmp)
        sim = Service("looker-sim", [str(bin_dir / "lookergate-looker-sim"), "--listen", "127.0.0.1:0",
                                     "--users", str(args.identities), "--login-latency-ms", str(args.login_latency_ms)], tmp)
        config = broker_config(bin_dir, sim.addr)
        redis = None
        if brokers_n > 1:
            # Replicas share Redis ([store]) with one sealing key: one login per identity.
            redis = start_redis(tmp)
            (tmp / "store-key").write_text(__import__("base64").b64encode(os.urandom(32)).decode())
            config += f'\n[store]\nurl = "redis://127.0.0.1:{redis[1]}/0"\nkey_file = "{tmp / "store-key"}"\n'
        (tmp / "broker.toml").write_text(config)
        brokers = [Service(f"broker-{i + 1}", [str(bin_dir / "lookergate-broker"), "--listen", "127.0.0.1:0",
                                                "--config", str(tmp / "broker.toml")], tmp) for i in range(brokers_n)]
        try:
            cpu_before = [b.cpu_seconds() for b in brokers]
            latencies: list[float] = []
            failures: list[str] = []
            tasks = []
            started = time.perf_counter()
            interval = args.seconds / args.identities
            for n in range(1, args.identities + 1):
                delay = started + (n - 1) * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Two gateways ask for the same new identity at once: at two replicas, if any.
                for k in range(2):
                    tasks.append(asyncio.create_task(ask_token(brokers[k % brokers_n].addr, n, latencies, failures)))
            arrived = time.perf_counter() - started
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - started
            with urllib.request.urlopen(f"http://{sim.addr}/__sim/logins") as r:
                logins = json.load(r)
            user_logins = [l for l in logins if l.get("sudo_user_id", "").isdigit() and int(l["sudo_user_id"]) > 100_000]
            per_identity: dict[str, int] = {}
            for l in user_logins:
                per_identity[l["sudo_user_id"]] = per_identity.get(l["sudo_user_id"], 0) + 1
            return {
                "brokers": brokers_n,
                "identities": args.identities,
                "login_latency_ms": args.login_latency_ms,
                "requests": 2 * args.identities,
                "arrival_seconds": round(arrived, 1),
                "wall_seconds": round(wall, 1),
                "failures": len(failures),
                "failure_sample": failures[:5],
                "user_logins": len(user_logins),
                "identities_logged_in_more_than_once": sum(1 for c in per_identity.values() if c > 1),
                "all_logins": len(logins),
                "p50_ms": round(quantile(latencies, 0.50) * 1000, 1),
                "p99_ms": round(quantile(latencies, 0.99) * 1000, 1),
                "max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
                "broker_cpu_seconds": [round(b.cpu_seconds() - c, 2) for b, c in zip(brokers, cpu_before)],
                "broker_peak_rss_mib": [round(b.peak_rss_mib(), 1) for b in brokers],
                "sim_cpu_seconds": round(sim.cpu_seconds(), 2),
            }
        finally:
            for service in brokers + [sim]:
                service.stop()
            if redis:
                redis[0].terminate()
                redis[0].wait(5)


def markdown(results: list[dict], command: str) -> str:
    lines = [
        BEGIN,
        f"Command: `{command}` (release builds; {results[0]['identities']:,} identities, each asked for twice at once,",
        f"arriving over {results[0]['arrival_seconds']} s; every simulator login takes {results[0]['login_latency_ms']} ms; with two brokers",
        "each identity is asked for at both, which share a redis-server through `[store]`). \"Looker user logins\": the",
        f"simulator's `login/{{user_id}}` for those identities (one more login is the broker's sudo admin). Machine: {os.cpu_count()} cores, shared.",
        "",
        "| brokers | token requests | failed | Looker user logins | identities logged in twice | p50 to a token | p99 | max | broker CPU s | broker peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['brokers']} | {r['requests']:,} | {r['failures']} | {r['user_logins']:,} | {r['identities_logged_in_more_than_once']:,} "
            f"| {r['p50_ms']} ms | {r['p99_ms']} ms | {r['max_ms']} ms | {' + '.join(map(str, r['broker_cpu_seconds']))} "
            f"| {' / '.join(map(str, r['broker_peak_rss_mib']))} |"
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--login-latency-ms", type=int, default=50)
    parser.add_argument("--brokers", default="1,2", help="broker counts to run, e.g. 1,2")
    parser.add_argument("--bin-dir", default="target/release")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    results = []
    for n in [int(x) for x in args.brokers.split(",")]:
        result = asyncio.run(run(args, n))
        print(json.dumps(result), flush=True)
        results.append(result)
    command = "python3 bench/broker_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    block = markdown(results, command.strip())
    print(block)
    if not args.no_write:
        text = RESULTS.read_text()
        if BEGIN in text:
            text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n## Token broker under 10,000 new identities a minute (issue 16)\n\n" + block + "\n"
        RESULTS.write_text(text)
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
