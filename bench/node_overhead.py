#!/usr/bin/env python3
"""Node.js probe overhead: request throughput with and without the probe, and attach latency.

Three copies of tests/apps/nodejs/http_app.js run side by side on loopback: one plain, one
with the JS layer alone (`--layers js`), one with both layers (JS + the Frida native layer),
each attached live (the `rasp-attach` route, in-process) while an agent stores the events.
`wrk` drives each endpoint against the three copies in alternating rounds (so drift on the
shared machine hits all alike); the ratio is probed/plain of the medians. On a shared 2-core
machine the agent (storing every event) competes with the app for CPU, so the benchmark also
reports the CPU the *app process* spent per request (utime+stime from /proc): plain/probed of
that is the probe's own cost, free of the agent's share. Endpoints:

- `ping`: no sink, only the request-context hook (AsyncLocalStorage around every request);
- `read`: one hooked fs.readFile per request (event with stack and request context);
- `dns`: one hooked dns.lookup of localhost per request.

With both layers, each of those calls is also seen by a native hook (uv_fs_open,
uv_getaddrinfo) and matched against the JS layer's note: no extra event, extra work.

Per-call cost: a node process times fs.readFileSync of a small file (one hooked call, the
whole path: args, stack, policy checks, queue, batched write, agent ingest) in chunks that
yield to the event loop, before and after starting the probe (quota raised so nothing is
cut); the difference is the probe's cost per event, in µs.

The native layer's cost per hooked call: the same kind of loop in two node processes, one
with the JS layer alone, one with both layers (process CPU time, alternating, medians).

Attach latency is timed on fresh processes, JS layer alone: SIGUSR1 -> probe's hello stored
at the agent (`injector.attach.attach`, what `rasp-attach` runs after its Python start-up);
and the native layer's injection (Frida attach, load, detach) on fresh processes too.

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
from rasp.nodejs import native_agent  # noqa: E402
from tests.agentproc import AgentProc, wait_for  # noqa: E402

APP = REPO / "tests" / "apps" / "nodejs" / "http_app.js"
VARIANTS = ("plain", "js", "both")
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


# The native layer's own cost per hooked call: the same loop, process CPU time (not wall:
# the VM is shared), in a process with the JS layer alone and one with both layers.
LAYER_COST_JS = r"""
const fs = require('fs');
const readline = require('readline');
const [probePath, socket, n] = process.argv.slice(1);
const N = Number(n);
const tick = () => new Promise((r) => setImmediate(r));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function loop() {
  const t = process.cpuUsage();
  for (let done = 0; done < N; done += 200) {
    for (let i = 0; i < 200; i++) fs.readFileSync('/etc/hostname');
    await tick();
  }
  await sleep(50); // the native layer's flush and the JS layer's match are part of the cost
  const c = process.cpuUsage(t);
  return (c.user + c.system) / N;
}
console.log(process.pid);
readline.createInterface({ input: process.stdin }).once('line', async (line) => {
  const native = line === 'js' ? undefined : JSON.parse(line);
  require(probePath).start({ socket, mode: 'sdk', native });
  const p = globalThis[Symbol.for('rampart.nodejs.probe')];
  while (p.client.state !== 'connected' || !p.uuids.quota) await sleep(10);
  await loop();
  const us = Math.min(await loop(), await loop(), await loop());
  const nat = p.native ? { matched: p.native.matched, bypassed: p.native.bypassed } : null;
  console.log(JSON.stringify({ us, native: nat, status: p.nativeStatus }));
  process.exit(0);
});
"""


def layer_cost(socket: Path, rounds: int, n: int = 10000) -> dict[str, float | int]:
    """CPU µs per hooked call with the JS layer alone and with both; alternating processes."""
    probe = REPO / "rasp" / "nodejs" / "probe.js"
    got: dict[str, list[float]] = {"js": [], "both": []}
    bypassed = 0
    for _ in range(rounds):
        for v in ("js", "both"):
            p = subprocess.Popen(
                ["node", "-e", LAYER_COST_JS, str(probe), str(socket), str(n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert p.stdin is not None and p.stdout is not None
            pid = int(p.stdout.readline())
            line = "js" if v == "js" else json.dumps(native_agent.load(pid).for_js())
            p.stdin.write(line + "\n")
            p.stdin.flush()
            r = json.loads(p.stdout.readline())
            p.wait(timeout=60)
            got[v].append(r["us"])
            if v == "both":
                assert r["status"] == "ok" and r["native"]["matched"] > 0, r
                bypassed += r["native"]["bypassed"]
    js, both = statistics.median(got["js"]), statistics.median(got["both"])
    return {
        "js_us": round(js, 2),
        "both_us": round(both, 2),
        "native_us": round(both - js, 2),
        "bypassed": bypassed,  # JS-originated calls only: must stay 0
    }


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
        # without the eBPF driver: its host-wide events are not the probe's cost, and on a busy
        # shared VM they kept the agent from answering its control socket in time
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")},
            "RAMPART_DRIVER": "off",
        },
    )
    # nothing cut by quota: the benchmark wants every event's full path
    agent.policy.write_text('policies: []\nquotas:\n  - {hook: "*", per_minute: 100000000}\n')
    agent.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        apps = {name: start_app() for name in VARIANTS}
        procs += [p for p, _ in apps.values()]
        ATTACHER.layers = ("js",)
        attach(apps["js"][0].pid, "nodejs", agent.socket, 10)
        ATTACHER.layers = ("js", "native")
        attach(apps["both"][0].pid, "nodejs", agent.socket, 10)

        results: dict[str, dict[str, dict[str, float]]] = {}
        for name, path in ENDPOINTS.items():
            for _p, port in apps.values():
                wrk(port, path, 1)  # warm all (JIT)
            rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
            cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for v, (p, port) in apps.items():
                    r, c = wrk(port, path, args.seconds, p.pid)
                    rps[v].append(r)
                    cpu[v].append(c)
            med = {v: statistics.median(rps[v]) for v in VARIANTS}
            cmed = {v: statistics.median(cpu[v]) for v in VARIANTS}
            results[name] = {
                v: {
                    "rps": round(med[v]),
                    "ratio": round(med[v] / med["plain"], 3),
                    "cpu_us_per_req": round(cmed[v], 1),
                    "cpu_ratio": round(cmed["plain"] / cmed[v], 3),
                }
                for v in VARIANTS
            }

        cost = hook_cost(agent.socket)
        lcost = layer_cost(agent.socket, args.rounds)

        # let the agent drain what the load runs produced: attach latency is not ingest
        wait_for(lambda: agent.control("stats").get("backlog", 0) == 0, 120, "agent backlog")
        latencies = []
        inject = []
        native_ms = []
        for _ in range(args.attaches):
            p, _port = start_app()
            procs.append(p)
            ATTACHER.layers = ("js",)
            t0 = time.perf_counter()
            attach(p.pid, "nodejs", agent.socket, 10)
            latencies.append((time.perf_counter() - t0) * 1000)
            inject.append(ATTACHER.last_ms)
            p.kill()
            p.wait()
            p, _port = start_app()
            procs.append(p)
            native_ms.append(native_agent.load(p.pid).elapsed_ms)
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
            "native_median": round(statistics.median(native_ms), 1),
            "native_max": round(max(native_ms), 1),
        },
        "hook_cost": cost,
        "layer_cost": lcost,
        "agent_received": stats.get("received"),
    }
    if args.json:
        print(json.dumps(report))
        return
    print("endpoint  layers  req/s   ratio   app CPU µs/req  CPU ratio")
    for name, r in results.items():
        for v in VARIANTS:
            x = r[v]
            print(
                f"{name:8}  {v:6} {x['rps']:6}  {x['ratio']:.3f}   {x['cpu_us_per_req']:>14}"
                f"  {x['cpu_ratio']:.3f}"
            )
    print(
        f"per hooked call (fs.readFileSync, full path to the agent): {cost['plain_us']} µs -> "
        f"{cost['probed_us']} µs, +{cost['cost_us']} µs/event ({cost['dropped']} dropped)"
    )
    print(
        f"per hooked call, app CPU (fs.readFileSync loop): JS layer {lcost['js_us']} µs, "
        f"both layers {lcost['both_us']} µs: native layer +{lcost['native_us']} µs "
        f"({lcost['bypassed']} false bypasses)"
    )
    am = report["attach_ms"]
    print(f"attach (SIGUSR1 -> hello at the agent): median {am['median']} ms, "
          f"min {am['min']}, max {am['max']}; of which SIGUSR1 -> inspector closed: "
          f"median {am['inject_median']} ms")  # fmt: skip
    print(f"native layer injection (Frida attach + load + detach): median "
          f"{am['native_median']} ms, max {am['native_max']} ms")  # fmt: skip


if __name__ == "__main__":
    main()
