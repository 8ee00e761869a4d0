#!/usr/bin/env python3
"""CPython probe overhead: app throughput with and without the probe, ns per hooked call,
attach latency.

1. Throughput: two identical Flask apps under gunicorn (1 sync worker each), the probe
   attached live to one of them; `wrk` on loopback against `/bench` (one file read and one
   SQL query per request), runs alternated A/B/A/B in the same session; ratio = with/without.
2. ns per hooked call: `sys.audit("os.system", ...)` in a loop, 20 frames deep, with the
   probe minus without it, in CPU time of the calling thread (thread_time: robust to a
   loaded machine), best of 7 loops. App-thread cost: events built, policy-checked and queued, with
   the shipper thread stopped so nothing else competes for the GIL; total CPU per event:
   the same with the shipper sending to a real agent (encoding and socket writes included).
   Each with stack capture off and at the default depth (32); plus the cost of an audit
   event the probe does not hook.
3. Attach latency: `injector.attach.attach()` (record, inject, wait for the hello) and the
   whole `rasp-attach` command (including its own interpreter start-up).

    .venv/bin/python bench/python_overhead.py [--seconds 5] [--rounds 3] [--json]
        [--baseline REF] [--calls-only] [--python-path-too]

--baseline REF also measures the ns per call of the probe as it is in git REF (`git archive`
of rasp/python into a temp dir), in the same run, interleaved with this tree's: before/after
figures taken side by side. --calls-only skips attach latency and throughput.
--python-path-too adds a third app whose probe runs its pure-Python path (the C accelerator
off: RAMPART_PYTHON_ACCEL=0), measured in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from injector import attach as attach_mod  # noqa: E402
from rasp.protocol.client import control  # noqa: E402

BIN = Path(sys.executable).parent
PROBE_DIR = REPO / "rasp" / "python"

CALLS_SCRIPT = r"""
import os, sys, time, json
sys.path.insert(0, sys.argv[1])
N = 5000  # per timed loop: below the probe's queue bound, so every event is queued
def deep(n, fn):
    return deep(n - 1, fn) if n else fn()
def loop(event):
    # CPU time of this thread: other processes on a loaded machine do not inflate it
    t = time.thread_time_ns()
    for _ in range(N):
        sys.audit(event, "true")
    return (time.thread_time_ns() - t) / N
def drained(p):
    while p is not None and p.queue:
        time.sleep(0.005)
def best(event, p=None):
    out = []
    for _ in range(7):
        drained(p)
        out.append(deep(20, lambda: loop(event)))
    return min(out)
def cpu_per_event(event, p):
    drained(p)
    c = time.process_time_ns()
    for _ in range(10):
        deep(20, lambda: loop(event))
        drained(p)
    return (time.process_time_ns() - c) / (10 * N)
out = {"miss_without": best("rampart.bench.unhooked"), "hit_without": best("os.system")}
if sys.argv[2] != "-":
    import rampart_probe
    from rampart_probe.rules import Quotas
    p = rampart_probe.start(sys.argv[2], mode="sdk")
    while not p.connected:
        time.sleep(0.01)
    time.sleep(0.2)  # the agent's tables arrive
    p.quotas = Quotas("bench", [{"hook": "*", "per_minute": 10 ** 9}])
    out["miss_with"] = best("rampart.bench.unhooked")
    # app-thread cost: the shipper is stopped, so events are built and queued and nothing
    # else competes for the GIL; the queue is emptied between loops
    p.detached = True
    p.thread.join(5)
    p.detached = False
    p.away = False
    def hot(depth):
        p.stack_depth = depth
        r = []
        for _ in range(7):
            p.queue.clear()
            r.append(deep(20, lambda: loop("os.system")))
        return min(r)
    out["hit_with_nostack"] = hot(0)
    out["hit_with_stack32"] = hot(32)
    # the no-report path: a filter rule drops the event (stack depth 32 configured)
    from rampart_probe.rules import RuleTable
    p.filters = RuleTable("f", [{"policy_id": "quiet", "hook": "os.system",
                                 "match": {"args": "^true$"}}])
    out["hit_with_filtered"] = hot(32)
    p.filters = RuleTable()
    p.queue.clear()
    p.kick()  # the shipper again: total CPU per event, shipping included
    while not p.connected or p.quotas.uuid == "bench":
        time.sleep(0.01)  # the agent pushes its tables again after the new hello
    p.quotas = Quotas("bench", [{"hook": "*", "per_minute": 10 ** 9}])
    p.stack_depth = 0
    out["cpu_nostack"] = cpu_per_event("os.system", p)
    p.stack_depth = 32
    out["cpu_stack32"] = cpu_per_event("os.system", p)
    out["dropped_by"] = dict(p.dropped_by)
    out["sent"] = p.sent
print(json.dumps(out))
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"gunicorn on {port} did not start")


def gunicorn(port: int, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(REPO),
            "tests.apps.python.flask_app:app",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def worker_of(master: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    raise SystemExit("no gunicorn worker")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, seconds: float) -> tuple[float, int]:
    res = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            "8",
            "-d",
            f"{max(1, round(seconds))}s",
            f"http://127.0.0.1:{port}/bench?name=alice",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", res.stdout)
    if errors:
        raise SystemExit(f"wrk saw errors: {res.stdout}")
    assert m, res.stdout
    n = re.search(r"(\d+) requests in", res.stdout)
    assert n, res.stdout
    return float(m.group(1)), int(n.group(1))


def measured(port: int, worker: int, seconds: float) -> tuple[float, float]:
    """(requests/s, worker CPU µs per request) of one wrk run."""
    c = cpu_s(worker)
    rps, n = wrk(port, seconds)
    return rps, (cpu_s(worker) - c) / n * 1e6


def baseline_probe(ref: str, dest: Path) -> Path:
    """rasp/python as it is in git `ref`, extracted into dest."""
    dest.mkdir()
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "rasp/python"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return dest / "rasp" / "python"


def calls_figures(script: Path, probe_dir: Path, sock: Path) -> dict:
    def run(target: str) -> dict:
        res = subprocess.run(
            [sys.executable, str(script), str(probe_dir), target],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(res.stdout)

    base, calls = run("-"), run(str(sock))
    return {
        "ns_audit_event_without_probe": round(base["hit_without"], 1),
        "ns_unhooked_event_added": round(calls["miss_with"] - calls["miss_without"], 1),
        "ns_hooked_call_no_stack": round(calls["hit_with_nostack"] - calls["hit_without"], 1),
        "ns_hooked_call_stack32": round(calls["hit_with_stack32"] - calls["hit_without"], 1),
        "ns_filtered_call": round(calls["hit_with_filtered"] - calls["hit_without"], 1),
        "cpu_ns_per_event_no_stack": round(calls["cpu_nostack"] - base["hit_without"]),
        "cpu_ns_per_event_stack32": round(calls["cpu_stack32"] - base["hit_without"]),
        "calls_dropped_by": calls["dropped_by"],
    }


def finish(out: dict, a: argparse.Namespace) -> None:
    if a.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:34} {v}")


def start_agent(d: Path) -> tuple[subprocess.Popen, Path]:
    sock = d / "probe.sock"
    agent = subprocess.Popen(
        [str(BIN / "rasp-agent"), "run", "--socket", str(sock), "--store", str(d / "ev.db")],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "agent.log", "wb"),  # noqa: SIM115 - lives as long as the agent
    )
    deadline = time.monotonic() + 60  # a loaded machine starts it slowly
    while time.monotonic() < deadline:
        try:
            control(sock, "ping", timeout=1)
            return agent, sock
        except Exception:
            time.sleep(0.05)
    raise SystemExit("agent did not start")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--baseline", metavar="REF", help="also measure the probe of git REF")
    ap.add_argument("--calls-only", action="store_true", help="only the ns-per-call figures")
    ap.add_argument(
        "--call-rounds", type=int, default=3, help="ns-per-call runs, min kept (0: none)"
    )
    ap.add_argument(
        "--python-path-too",
        action="store_true",
        help="also a third app whose probe runs its pure-Python path (RAMPART_PYTHON_ACCEL=0)",
    )
    a = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: run `make setup`")
    d = Path(tempfile.mkdtemp(prefix="rampart-bench-py-"))
    procs: list[subprocess.Popen] = []
    out: dict = {}
    try:
        agent, sock = start_agent(d)
        procs.append(agent)

        # --- ns per hooked call (this tree's probe, and the baseline's, interleaved)
        script = d / "calls.py"
        script.write_text(CALLS_SCRIPT)
        dirs = {"": PROBE_DIR}
        if a.baseline:
            dirs["before_"] = baseline_probe(a.baseline, d / "baseline")
        runs: dict = {k: [] for k in dirs}
        for _ in range(a.call_rounds):
            for prefix, probe_dir in dirs.items():
                runs[prefix].append(calls_figures(script, probe_dir, sock))
        for prefix, figs in runs.items():
            for k in figs[0] if figs else ():
                vals = [f[k] for f in figs]
                out[prefix + k] = min(vals) if isinstance(vals[0], (int, float)) else vals[-1]
        if a.calls_only:
            return finish(out, a)

        # --- attach latency (probe already imported by nobody: a fresh app each time)
        lat_api, lat_cli = [], []
        for i in range(3):
            port = free_port()
            g = gunicorn(port)
            procs.append(g)
            wait_http(port)
            w = worker_of(g.pid)
            t = time.perf_counter()
            if i % 2 == 0:
                attach_mod.attach(w, "auto", sock, timeout=10)
                lat_api.append((time.perf_counter() - t) * 1000)
            else:
                subprocess.run(
                    [str(BIN / "rasp-attach"), "--pid", str(w), "--socket", str(sock)],
                    check=True,
                    capture_output=True,
                )
                lat_cli.append((time.perf_counter() - t) * 1000)
            stop(g)
        out["attach_ms_api"] = [round(x, 1) for x in lat_api]
        out["attach_ms_cli"] = [round(x, 1) for x in lat_cli]

        # --- throughput, same session, alternated
        pa, pb = free_port(), free_port()
        ga, gb = gunicorn(pa), gunicorn(pb)
        procs += [ga, gb]
        apps = [(pa, ga), (pb, gb)]
        if a.python_path_too:  # the probe's pure-Python path, in the same rounds
            pc = free_port()
            gc = gunicorn(pc, {**os.environ, "RAMPART_PYTHON_ACCEL": "0"})
            procs.append(gc)
            apps.append((pc, gc))
        for port, _ in apps:
            wait_http(port)
        workers = [worker_of(g.pid) for _, g in apps]
        wa, wb = workers[0], workers[1]
        # every event reported in full: lift the default quota (12,000 per hook and minute),
        # which would otherwise cut most of a 2,000 req/s run's events after the first minute's
        unlimited = {"uuid": "bench", "quotas": [{"hook": "*", "per_minute": 10**9}]}
        for w in workers[1:]:
            attach_mod.attach(w, "auto", sock, timeout=10)
            control(sock, "push", {"pid": w, "frame": {"message_type": 8, "data": unlimited}})
        for port, _ in apps:
            wrk(port, 1)  # warm-up
        without, with_, with_py = [], [], []
        for _ in range(a.rounds):
            without.append(measured(pa, wa, a.seconds))
            with_.append(measured(pb, wb, a.seconds))
            if a.python_path_too:
                with_py.append(measured(apps[2][0], workers[2], a.seconds))
        out["rps_without"] = [round(x[0]) for x in without]
        out["rps_with"] = [round(x[0]) for x in with_]
        out["throughput_ratio"] = round(
            statistics.mean(x[0] for x in with_) / statistics.mean(x[0] for x in without), 3
        )
        # CPU the worker spends per request: less sensitive to a shared machine than req/s
        out["cpu_us_per_request_without"] = round(statistics.median(x[1] for x in without))
        out["cpu_us_per_request_with"] = round(statistics.median(x[1] for x in with_))
        out["cpu_ratio"] = round(
            out["cpu_us_per_request_without"] / out["cpu_us_per_request_with"], 3
        )
        if with_py:
            out["rps_with_python_path"] = [round(x[0]) for x in with_py]
            out["throughput_ratio_python_path"] = round(
                statistics.mean(x[0] for x in with_py) / statistics.mean(x[0] for x in without),
                3,
            )
            out["cpu_us_per_request_with_python_path"] = round(
                statistics.median(x[1] for x in with_py)
            )
        rows = control(sock, "ps")
        out["probe_events"] = sum(r["events"] for r in rows)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(d, ignore_errors=True)
    finish(out, a)


if __name__ == "__main__":
    os.environ.pop("RAMPART_SOCKET", None)
    main()
