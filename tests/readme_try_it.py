#!/usr/bin/env python3
"""The README's "Try it" commands produce what the README shows.

Reads the part of README.md between `<!-- try-it -->` and `<!-- /try-it -->`: each
fenced `sh` block is run, in order, in one bash from the repository root (so a variable
one block sets is there for the next), and the fenced block right after it is what that
block must print. Request ids (UUIDs) are compared as `<uuid>`, and nothing else is
loosened: the check fails as soon as the README and the gateway diverge.

Starts the demo as `make demo` does (envoy/run-demo.sh, with the binaries of
LOOKERGATE_BIN_DIR, default target/release; the wasm and the release CLI the README uses
must be built, which the Makefile target does first) unless `--running` says a demo
already listens on its ports. `make readme-check` runs it with the debug binaries.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- try-it -->", "<!-- /try-it -->"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    """(command, expected output) pairs of the try-it section."""
    text = README.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        sys.exit(f"README.md: expected one {BEGIN} ... {END} section")
    section = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    fences = [(m.group(1), m.group(2)) for m in FENCE.finditer(section)]
    pairs = []
    i = 0
    while i < len(fences):
        lang, body = fences[i]
        if lang != "sh":
            sys.exit(f"README.md try-it: a {lang or 'plain'} block follows no sh block:\n{body}")
        if i + 1 >= len(fences) or fences[i + 1][0] == "sh":
            sys.exit(f"README.md try-it: this sh block shows no output:\n{body}")
        pairs.append((body, fences[i + 1][1]))
        i += 2
    if not pairs:
        sys.exit("README.md try-it: no commands")
    return pairs


def wait_ready(deadline: float) -> None:
    while time.time() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:9901/ready", timeout=1) as r:
                if r.status == 200:
                    with urllib.request.urlopen("http://127.0.0.1:10070/__idp/stats", timeout=1) as s:
                        if b'"jwks_requests":0' not in s.read():
                            return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("readme_try_it: the demo did not become ready (its log: target/readme-try-it-demo.log)")


def normalize(text: str) -> str:
    return UUID.sub("<uuid>", text).rstrip("\n")


def main() -> int:
    pairs = blocks()
    demo = None
    # The demo's own output (Envoy logs at info) goes to a file: a pipe nobody reads would
    # fill and stop it.
    demo_log = ROOT / "target/readme-try-it-demo.log"
    if "--running" not in sys.argv:
        demo_log.parent.mkdir(exist_ok=True)
        with open(demo_log, "w") as log:
            demo = subprocess.Popen(
                ["envoy/run-demo.sh"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    try:
        wait_ready(time.time() + 60)
        shell = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )
        marker = "__try_it_done__"
        failures = []
        for command, expected in pairs:
            assert shell.stdin and shell.stdout
            shell.stdin.write(command + f"\necho; echo {marker}\n")
            shell.stdin.flush()
            lines = []
            for line in shell.stdout:
                if line.rstrip("\n") == marker:
                    break
                lines.append(line)
            got = "".join(lines)
            # The `echo` above ends a last line that had no newline (curl's JSON).
            got = got[:-1] if got.endswith("\n\n") or got == "\n" else got
            if normalize(got) != normalize(expected):
                failures.append(f"$ {command}\n--- README shows:\n{expected}--- the demo printed:\n{got}")
        if shell.stdin:
            shell.stdin.close()
        shell.wait(timeout=10)
        for failure in failures:
            print(failure, file=sys.stderr)
        if failures and demo is not None:
            print(f"(the demo's log: {demo_log})", file=sys.stderr)
        print(f"readme_try_it: {len(pairs) - len(failures)}/{len(pairs)} README commands print what it shows")
        return 1 if failures else 0
    finally:
        if demo is not None:
            os.killpg(demo.pid, signal.SIGINT)
            try:
                demo.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
