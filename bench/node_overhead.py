#!/usr/bin/env python3
"""Node.js probe overhead: request throughput with and without the JS probe, and attach latency.

Two copies of tests/apps/nodejs/http_app.js run side by side on loopback; one gets the probe
live (`rasp-attach` route, in-process) while an agent stores its events. `wrk` drives each
endpoint against both copies in alternating rounds (so drift on the shared machine hits both
alike); the ratio is probed/plain of the medians. Endpoints:

- `ping`: no sink, only the request-context hook (AsyncLocalStorage around every request);
- `read`: one hooked fs.readFile per request (event with stack and request context);
- `dns`: one hooked dns.lookup of localhost per request.

Attach latency is timed on fresh processes: SIGUSR1 -> probe's hello stored at the agent
(`injector.attach.attach`, what `rasp-attach` runs after its Python start-up).

    .venv/bin/python bench/node_overhead.py [--seconds 4] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from injector.attach import attach  # noqa: E402
from tests.agentproc import AgentProc  # noqa: E402

APP = REPO / "tests" / "apps" / "nodejs" / "http_app.js"
ENDPOINTS = {"ping": "/ping", "read": "/read?path=/etc/hostname", "dns": "/dns?host=localhost"}


def start_app() -> tuple[subprocess.Popen[bytes], int]:
    p = subprocess.Popen(
        ["node", "--inspect-port=0", str(APP)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert p.stdout is not None
    return p, int(p.stdout.readline().split()[1])


def wrk(port: int, path: str, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert m, out
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--attaches", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: run `make setup`")

    d = Path(tempfile.mkdtemp(prefix="rampart-bench-node-"))
    agent = AgentProc(
        dir=d,
        socket=d / "probe.sock",
        store=d / "events.db",
        jsonl=d / "events.jsonl",
        policy=d / "policy.yaml",
        log=d / "agent.log",
        env={k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")},
    ).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        plain, plain_port = start_app()
        probed, probed_port = start_app()
        procs += [plain, probed]
        attach(probed.pid, "nodejs", agent.socket, 10)

        results = {}
        for name, path in ENDPOINTS.items():
            wrk(plain_port, path, 1)  # warm both (JIT)
            wrk(probed_port, path, 1)
            a, b = [], []
            for _ in range(args.rounds):
                a.append(wrk(plain_port, path, args.seconds))
                b.append(wrk(probed_port, path, args.seconds))
            results[name] = {
                "plain_rps": round(statistics.median(a)),
                "probed_rps": round(statistics.median(b)),
                "ratio": round(statistics.median(b) / statistics.median(a), 3),
            }

        latencies = []
        for _ in range(args.attaches):
            p, _port = start_app()
            procs.append(p)
            t0 = time.perf_counter()
            attach(p.pid, "nodejs", agent.socket, 10)
            latencies.append((time.perf_counter() - t0) * 1000)
            p.kill()
            p.wait()
        stats = agent.control("stats")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        agent.stop()
        shutil.rmtree(d, ignore_errors=True)

    report = {
        "throughput": results,
        "attach_ms": {
            "median": round(statistics.median(latencies), 1),
            "min": round(min(latencies), 1),
            "max": round(max(latencies), 1),
        },
        "agent_received": stats.get("received"),
    }
    if args.json:
        print(json.dumps(report))
        return
    print("endpoint  plain req/s  probed req/s  ratio")
    for name, r in results.items():
        print(f"{name:8} {r['plain_rps']:12} {r['probed_rps']:13}  {r['ratio']:.3f}")
    am = report["attach_ms"]
    print(f"attach (SIGUSR1 -> hello at the agent): median {am['median']} ms, "
          f"min {am['min']}, max {am['max']}")  # fmt: skip


if __name__ == "__main__":
    main()
