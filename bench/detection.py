#!/usr/bin/env python3
"""Detection cost: the agent's detectors and the probes' in-probe checks (µs per event), and
the end-to-end throughput of apps in block mode against the same apps without the probe.

1. Per-detector cost in the agent (`host_agent.detectors.Detectors.check`) on realistic events
   with request context: a 1 KB SQL query with three request parameters found in it (uncached:
   every query text new; cached: the same query again), a shell command, a file path, a URL.
2. The in-probe check of block mode for the same events: CPython (`rampart_probe.detect`); and
   per case of the shared corpus (rasp/protocol/vectors/detect.json) in the JVM (`DetectCheck
   --bench`, after a JIT warm-up) and in node (lib/detect.js, which the PHP probe also runs):
   median and max ns per check.
3. Throughput, benign traffic, side by side in one run: three identical Flask apps under
   gunicorn (1 sync worker each): no probe; the probe attached to an agent without rules
   (observe); the probe attached to an agent whose rules file puts sqli.input, sqli.stacked,
   cmdi.input, path.traversal and ssrf.internal in block mode. wrk on loopback against
   `/sql?name=alice` (the parameter is found in a concatenated query: the SQL check runs in
   full) and `/bench?name=alice` (a file read and a parameterised query), rounds alternated.
   Default policy and quota. Ratio = block / none (and block / observe: what the checks add).
   The same for three JVMs running tests/apps/jvm/VulnApp.java (none, observe, block; attached
   with rasp-attach) on `/read?path=data.txt` (a file opened with request context: the path
   check runs) and `/ok` (no sink).

    .venv/bin/python bench/detection.py [--seconds 3] [--rounds 3] [--json]
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
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "rasp" / "python"))

from python_overhead import free_port, gunicorn, stop, wait_http, worker_of  # noqa: E402
from rampart_probe.detect import DetectTable  # noqa: E402

from host_agent.detectors import Detectors  # noqa: E402
from host_agent.detectors import sql as sqldet  # noqa: E402
from injector import attach as attach_mod  # noqa: E402
from rasp.protocol.client import control  # noqa: E402

BIN = Path(sys.executable).parent
BLOCK_RULES = "".join(
    f"  - {{id: {r}, action: block}}\n"
    for r in ("sqli.input", "sqli.stacked", "cmdi.input", "path.traversal", "ssrf.internal")
)
DETECT = [
    {"rule": r}
    for r in ("sqli.input", "sqli.stacked", "cmdi.input", "path.traversal", "ssrf.internal")
]


def _query_1k(salt: str) -> tuple[str, dict]:
    """A ~1 KB reporting query with three request parameters in it (benign values)."""
    cols = ", ".join(f"o.col_{i} AS c{i}" for i in range(40))
    q = (
        f"SELECT {cols}, u.name, u.email FROM orders o JOIN users u ON u.id = o.user_id "
        "WHERE u.name = 'alice smith' AND o.status = 'shipped' AND o.region = 'north-east' "
        f"AND o.note <> '{salt}' AND o.created_at > '2026-01-01' ORDER BY o.created_at DESC "
        "LIMIT 50 /* report */"
    )
    q = q + " " * max(0, 1024 - len(q))
    params = {"name": ["alice smith"], "status": ["shipped"], "region": ["north-east"]}
    return q, {"url": "http://127.0.0.1/report", "params": params}


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t) / n / 1000)
    return round(best, 2)


def micro() -> dict:
    out: dict = {}
    det = Detectors()
    table = DetectTable(DETECT)
    q, req = _query_1k("x")
    assert len(q) >= 1024
    n = 2000
    queries = [_query_1k(f"s{i}")[0] for i in range(5 * n + 10)]
    it = iter(queries)

    def uncached() -> object:
        return det.check("sql", "psycopg2.cursor.execute", [next(it)], req)

    sqldet.literal_regions.cache_clear()
    out["agent_sql_1k_uncached_us"] = _per_call_us(uncached, n)
    out["agent_sql_1k_cached_us"] = _per_call_us(
        lambda: det.check("sql", "psycopg2.cursor.execute", [q], req), n
    )
    it2 = iter(queries)
    out["probe_py_sql_1k_us"] = _per_call_us(
        lambda: table.check("sql", "psycopg2.cursor.execute", [next(it2)], req), n
    )
    cases = {
        "cmd": ("process", "os.system", ["convert /srv/in/photo.png -resize 50% /srv/out/p.png"],
                {"params": {"file": ["photo.png"], "size": ["50%"]}}),
        "path": ("file", "open", ["/srv/app/files/reports/q3-summary.pdf", "rb"],
                 {"params": {"f": ["reports/q3-summary.pdf"]}}),
        "ssrf": ("network", "http.request", ["https://api.example.com/v1/items?id=42"],
                 {"params": {"u": ["https://api.example.com/v1/items?id=42"]}}),
    }  # fmt: skip
    for name, (kind, hook, args, r) in cases.items():
        r = {"url": "http://127.0.0.1/x", **r}
        out[f"agent_{name}_us"] = _per_call_us(
            lambda k=kind, h=hook, a=args, r=r: det.check(k, h, a, r), n
        )
        out[f"probe_py_{name}_us"] = _per_call_us(
            lambda k=kind, h=hook, a=args, r=r: table.check(k, h, a, r), n
        )
    # what an event of a kind no block rule looks at costs in the probe (one dict miss)
    out["probe_py_other_kind_us"] = _per_call_us(
        lambda: table.check("code", "compile", ["x"], req), n
    )
    return out


CORPUS = REPO / "rasp" / "protocol" / "vectors" / "detect.json"
AGENT_JAR = REPO / "build" / "jvm" / "rampart-jvm-agent.jar"
NODE_BENCH = r"""
const { DetectTable } = require(process.argv[1]);
const corpus = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));
const out = [];
for (const c of corpus.cases) {
  const t = new DetectTable(c.detect || corpus.default_detect);
  for (let i = 0; i < 20000; i++) t.check(c.kind, c.hook, c.args, c.request);
  const s = process.hrtime.bigint();
  for (let i = 0; i < 20000; i++) t.check(c.kind, c.hook, c.args, c.request);
  out.push(Number(process.hrtime.bigint() - s) / 20000);
}
console.log(JSON.stringify(out));
"""


def other_runtimes() -> dict:
    """ns per in-probe check over the corpus cases: JVM and node (median, max)."""
    out: dict = {}
    res = subprocess.run(
        ["java", "-cp", str(AGENT_JAR), "rampart.jvm.DetectCheck", str(CORPUS), "--bench", "50000"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    ns = [int(line.split()[2]) for line in res.stdout.splitlines() if line.startswith("ns ")]
    out["probe_jvm_ns_per_check"] = {"median": statistics.median(ns), "max": max(ns)}
    res = subprocess.run(
        ["node", "-e", NODE_BENCH, "--", str(REPO / "rasp/nodejs/lib/detect.js"), str(CORPUS)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    ns_js = json.loads(res.stdout)
    out["probe_js_ns_per_check"] = {
        "median": round(statistics.median(ns_js)),
        "max": round(max(ns_js)),
    }
    return out


def jvm_throughput(d: Path, socks: dict[str, Path], seconds: float, rounds: int) -> dict:
    classes = d / "classes"
    subprocess.run(
        ["javac", "-d", str(classes), str(REPO / "tests/apps/jvm/VulnApp.java")], check=True
    )
    (d / "data.txt").write_text("hello\n")
    jvms: dict[str, tuple[subprocess.Popen, int]] = {}
    out: dict = {}
    try:
        for mode in ("none", "observe", "block"):
            p = subprocess.Popen(
                ["java", "-Dsun.net.httpserver.nodelay=true", "-cp", str(classes), "VulnApp"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                cwd=d,
            )  # fmt: skip
            assert p.stdout is not None
            jvms[mode] = (p, int(p.stdout.readline().split()[1]))
        for mode in ("observe", "block"):
            subprocess.run(
                [str(BIN / "rasp-attach"), "--pid", str(jvms[mode][0].pid), "--socket",
                 str(socks[mode])],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        for path in ("/read?path=data.txt", "/ok"):
            for _, port in jvms.values():
                _wrk_url(port, 2, path)  # JIT warm-up
            got: dict[str, list[float]] = {m: [] for m in jvms}
            for _ in range(rounds):
                for mode, (_, port) in jvms.items():
                    got[mode].append(_wrk_url(port, seconds, path)[0])
            key = "jvm_" + path.split("?")[0].strip("/")
            rps = {m: statistics.median(v) for m, v in got.items()}
            out[f"{key}_rps"] = {m: round(v) for m, v in rps.items()}
            out[f"{key}_ratio_block_vs_none"] = round(rps["block"] / rps["none"], 3)
            out[f"{key}_ratio_block_vs_observe"] = round(rps["block"] / rps["observe"], 3)
    finally:
        for p, _ in jvms.values():
            p.kill()
            p.wait()
            Path(f"/tmp/.java_pid{p.pid}").unlink(missing_ok=True)
    return out


def _agent(d: Path, name: str, rules: str | None) -> tuple[subprocess.Popen, Path]:
    sock = d / f"{name}.sock"
    args = [str(BIN / "rasp-agent"), "run", "--socket", str(sock), "--store", str(d / f"{name}.db")]
    if rules is not None:
        (d / f"{name}.yaml").write_text(rules)
        args += ["--rules", str(d / f"{name}.yaml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    env["RAMPART_DRIVER"] = "off"
    agent = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=open(d / f"{name}.log", "wb"),  # noqa: SIM115 - lives as long as the agent
        env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            control(sock, "ping", timeout=1)
            return agent, sock
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"agent {name} did not start")


def _wrk_url(port: int, seconds: float, path: str) -> tuple[float, int]:
    res = subprocess.run(
        ["wrk", "-t", "1", "-c", "8", "-d", f"{max(1, round(seconds))}s",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    if "Non-2xx" in res.stdout:
        raise SystemExit(f"wrk saw errors on {path} (a benign request was blocked?): {res.stdout}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    n = re.search(r"(\d+) requests in", res.stdout)
    assert m and n, res.stdout
    return float(m.group(1)), int(n.group(1))


def throughput(seconds: float, rounds: int) -> dict:
    d = Path(tempfile.mkdtemp(prefix="rampart-bench-detect-"))
    procs: list[subprocess.Popen] = []
    out: dict = {}
    try:
        observe_agent, observe_sock = _agent(d, "observe", None)
        block_agent, block_sock = _agent(d, "block", "rules:\n" + BLOCK_RULES)
        procs += [observe_agent, block_agent]
        apps = {}
        for mode in ("none", "observe", "block"):
            port = free_port()
            g = gunicorn(port)
            procs.append(g)
            wait_http(port)
            apps[mode] = (port, worker_of(g.pid))
        attach_mod.attach(apps["observe"][1], "auto", observe_sock, timeout=10)
        attach_mod.attach(apps["block"][1], "auto", block_sock, timeout=10)
        # the block table with the detection rules is in force in the block app's probe: it
        # acknowledges the pushed policy with its next heartbeat, after the hello attach waits for
        deadline = time.monotonic() + 15
        while True:
            rows = control(block_sock, "ps")
            if rows and rows[0]["policy"] == rows[0]["policy_pushed"]:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        for path in ("/sql?name=alice", "/bench?name=alice"):
            for port, _ in apps.values():
                _wrk_url(port, 1, path)  # warm-up
            got: dict[str, list] = {m: [] for m in apps}
            for _ in range(rounds):
                for mode, (port, worker) in apps.items():
                    c = _cpu(worker)
                    rps, n = _wrk_url(port, seconds, path)
                    got[mode].append((rps, (_cpu(worker) - c) / n * 1e6))
            key = path.split("?")[0].strip("/")
            rps = {m: statistics.mean(x[0] for x in v) for m, v in got.items()}
            cpu = {m: statistics.median(x[1] for x in v) for m, v in got.items()}
            out[f"{key}_rps"] = {m: round(v) for m, v in rps.items()}
            out[f"{key}_cpu_us_per_request"] = {m: round(v) for m, v in cpu.items()}
            out[f"{key}_ratio_block_vs_none"] = round(rps["block"] / rps["none"], 3)
            out[f"{key}_ratio_block_vs_observe"] = round(rps["block"] / rps["observe"], 3)
            out[f"{key}_cpu_ratio_block_vs_none"] = round(cpu["none"] / cpu["block"], 3)
            out[f"{key}_cpu_ratio_block_vs_observe"] = round(cpu["observe"] / cpu["block"], 3)
        out.update(
            jvm_throughput(d, {"observe": observe_sock, "block": block_sock}, seconds, rounds)
        )
        stats = control(block_sock, "stats")
        out["block_agent_detections"] = stats.get("detections", {})
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(d, ignore_errors=True)
    return out


def _cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--micro-only", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = micro()
    out.update(other_runtimes())
    if not a.micro_only:
        if shutil.which("wrk") is None:
            raise SystemExit("wrk is missing: run `make setup`")
        out.update(throughput(a.seconds, a.rounds))
    if a.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:40} {v}")


if __name__ == "__main__":
    os.environ.pop("RAMPART_SOCKET", None)
    main()
