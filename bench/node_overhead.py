#!/usr/bin/env python3
"""Node.js probe overhead: request throughput with and without the JS probe, and attach latency.

Two copies of tests/apps/nodejs/http_app.js run side by side on loopback; one gets the probe
live (`rasp-attach` route, in-process) while an agent stores its events. `wrk` drives each
endpoint against both copies in alternating rounds (so drift on the shared machine hits both
alike); the ratio is probed/plain of the medians. On a shared 2-core machine the agent
(storing every event) competes with the app for CPU, so the benchmark also reports the CPU
the *app process* spent per request (utime+stime from /proc): plain/probed of that is the
probe's own cost, free of the agent's share. Endpoints:

- `ping`: no sink, only the request-context hook (AsyncLocalStorage around every request);
- `read`: one hooked fs.readFile per request (event with stack and request context);
- `dns`: one hooked dns.lookup of localhost per request.

Per-call cost: a node process times fs.readFileSync of a small file (one hooked call, the
whole path: args, stack, policy checks, queue, batched write, agent ingest) in chunks that
yield to the event loop, before and after starting the probe (quota raised so nothing is
cut); the difference is the probe's cost per event, in µs.

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
from injector.attach_nodejs import ATTACHER  # noqa: E402
from tests.agentproc import AgentProc, wait_for  # noqa: E402

APP = REPO / "tests" / "apps" / "nodejs" / "http_app.js"
ENDPOINTS = {"ping": "/ping", "read": "/read?path=/etc/hostname", "dns": "/dns?host=localhost"}


def start_app() -> tuple[subprocess.Popen[bytes], int]:
    p = subprocess.Popen(
        ["node", "--inspect-port=0", str(APP)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert p.stdout is not None
    return p, int(p.stdout.readline().split()[1])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wrk(port: int, path: str, seconds: int, pid: int | None = None) -> tuple[float, float]:
    """(requests/s, CPU µs the server process spent per request)."""
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    assert m and n, out
    cpu = (cpu_seconds(pid) - cpu0) * 1e6 / int(n.group(1)) if pid else 0.0
    return float(m.group(1)), cpu


HOOK_COST_JS = r"""
const fs = require('fs');
const [probePath, socket, n] = process.argv.slice(1);
const N = Number(n);
const tick = () => new Promise((r) => setImmediate(r));
async function loop() {
  let spent = 0n;
  for (let done = 0; done < N; done += 200) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < 200; i++) fs.readFileSync('/etc/hostname');
    spent += process.hrtime.bigint() - t;
    await tick(); // let the probe flush, as a server's event loop would
  }
  return Number(spent) / N / 1000;
}
(async () => {
  await loop();
  const base = Math.min(await loop(), await loop(), await loop());
  const probe = require(probePath);
  probe.start({ socket, mode: 'sdk' });
  const p = globalThis[Symbol.for('rampart.nodejs.probe')];
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  while (p.client.state !== 'connected' || !p.uuids.quota) await sleep(10);
  await loop();
  const hooked = Math.min(await loop(), await loop(), await loop());
  const c = p.counters;
  console.log(JSON.stringify({ base, hooked, sent: c.sent, dropped: c.dropped }));
})();
"""


def hook_cost(socket: Path, n: int = 20000) -> dict[str, float]:
    probe = REPO / "rasp" / "nodejs" / "probe.js"
    out = subprocess.run(
        ["node", "-e", HOOK_COST_JS, str(probe), str(socket), str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    r = json.loads(out)
    return {
        "plain_us": round(r["base"], 2),
        "probed_us": round(r["hooked"], 2),
        "cost_us": round(r["hooked"] - r["base"], 2),
        "dropped": r["dropped"],
    }


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
    )
    # nothing cut by quota: the benchmark wants every event's full path
    agent.policy.write_text('policies: []\nquotas:\n  - {hook: "*", per_minute: 100000000}\n')
    agent.start()
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
            a, b, ca, cb = [], [], [], []
            for _ in range(args.rounds):
                rps, cpu = wrk(plain_port, path, args.seconds, plain.pid)
                a.append(rps)
                ca.append(cpu)
                rps, cpu = wrk(probed_port, path, args.seconds, probed.pid)
                b.append(rps)
                cb.append(cpu)
            results[name] = {
                "plain_rps": round(statistics.median(a)),
                "probed_rps": round(statistics.median(b)),
                "ratio": round(statistics.median(b) / statistics.median(a), 3),
                "plain_cpu_us_per_req": round(statistics.median(ca), 1),
                "probed_cpu_us_per_req": round(statistics.median(cb), 1),
                "cpu_ratio": round(statistics.median(ca) / statistics.median(cb), 3),
            }

        cost = hook_cost(agent.socket)

        # let the agent drain what the load runs produced: attach latency is not ingest
        wait_for(lambda: agent.control("stats").get("backlog", 0) == 0, 120, "agent backlog")
        latencies = []
        inject = []
        for _ in range(args.attaches):
            p, _port = start_app()
            procs.append(p)
            t0 = time.perf_counter()
            attach(p.pid, "nodejs", agent.socket, 10)
            latencies.append((time.perf_counter() - t0) * 1000)
            inject.append(ATTACHER.last_ms)
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
            "inject_median": round(statistics.median(inject), 1),
        },
        "hook_cost": cost,
        "agent_received": stats.get("received"),
    }
    if args.json:
        print(json.dumps(report))
        return
    print("endpoint  plain req/s  probed req/s  ratio   app CPU µs/req plain -> probed  ratio")
    for name, r in results.items():
        print(
            f"{name:8} {r['plain_rps']:12} {r['probed_rps']:13}  {r['ratio']:.3f}"
            f"   {r['plain_cpu_us_per_req']:>14} -> {r['probed_cpu_us_per_req']:<8}  "
            f"{r['cpu_ratio']:.3f}"
        )
    print(
        f"per hooked call (fs.readFileSync, full path to the agent): {cost['plain_us']} µs -> "
        f"{cost['probed_us']} µs, +{cost['cost_us']} µs/event ({cost['dropped']} dropped)"
    )
    am = report["attach_ms"]
    print(f"attach (SIGUSR1 -> hello at the agent): median {am['median']} ms, "
          f"min {am['min']}, max {am['max']}; of which SIGUSR1 -> inspector closed: "
          f"median {am['inject_median']} ms")  # fmt: skip


if __name__ == "__main__":
    main()
