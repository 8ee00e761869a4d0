"""Go probe overhead, measured side by side in one run.

1. Throughput: two identical processes of the Go test app (tests/apps/golang/vulnapp, static
   build), the Go probe attached through a real agent (`rasp-attach`) to one of them; `wrk -t1
   -c8` on loopback, rounds alternated A/B/A/B; ratio = with / without (goal >= 0.97), and the
   app's CPU per request (utime + stime). Two workloads:
   - `/health`: a request that reaches no sink, the common case the goal is about (the
     probe's fixed cost per request: 2 uprobe hits, ServeHTTP and finishRequest, no record);
   - `/read?path=report.txt`: every request reaches a sink (os.ReadFile: a 3rd hit, the
     request's record and the event's, stored by the agent): the worst case.
2. Per-hit cost: `/spin?n=N` calls os.Remove on a missing file N times; the app's CPU time
   (utime + stime, which holds the uprobe trap and the BPF program) per call, with the probe
   minus without: the cost of one hit as the app pays it, ring-buffer record included (the
   agent's work is in its own process). CPU time rather than the wall-clock time the endpoint
   also reports: on a shared 2-core machine other processes inflate wall time, not CPU time.

    .venv/bin/python bench/go_overhead.py [--seconds 4] [--rounds 3] [--json]

Needs root (uprobes), `go` and `wrk`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
APP = REPO / "tests" / "apps" / "golang" / "vulnapp"
SPIN_N = 5000
SPIN_CALLS = 20


def build(out: Path) -> Path:
    exe = out / "vulnapp"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    subprocess.run(["go", "build", "-o", str(exe), "."], cwd=APP, env=env, check=True)
    return exe


def start_app(exe: Path, cwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    p = subprocess.Popen([str(exe)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    line = p.stdout.readline().decode()
    return p, int(line.split()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WORKLOADS = {"no_sink": "/health", "sink_every_request": "/read?path=report.txt"}


def wrk(port: int, seconds: float, route: str) -> tuple[float, int]:
    res = subprocess.run(
        ["wrk", "-t", "1", "-c", "8", "-d", f"{max(1, round(seconds))}s",
         f"http://127.0.0.1:{port}{route}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    if "Non-2xx" in res.stdout or "Socket errors" in res.stdout:
        raise SystemExit(f"wrk saw errors: {res.stdout}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    n = re.search(r"(\d+) requests in", res.stdout)
    assert rps and n, res.stdout
    return float(rps.group(1)), int(n.group(1))


def measured(pid: int, port: int, seconds: float, route: str) -> tuple[float, float]:
    c = cpu_s(pid)
    rps, n = wrk(port, seconds, route)
    return rps, (cpu_s(pid) - c) / n * 1e6


def spin_ns(pid: int, port: int) -> float:
    """App CPU ns per os.Remove call, over SPIN_CALLS requests of SPIN_N calls each."""
    c = cpu_s(pid)
    for _ in range(SPIN_CALLS):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/spin?n={SPIN_N}") as r:
            r.read()
    return (cpu_s(pid) - c) / (SPIN_CALLS * SPIN_N) * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("wrk") or not shutil.which("go"):
        print("go_overhead: skipped (needs root, wrk and go)")
        return
    with tempfile.TemporaryDirectory(prefix="rampart-gobench-") as td:
        d = Path(td)
        (d / "report.txt").write_text("quarterly\n")
        exe = build(d)
        sock = d / "probe.sock"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        agent = subprocess.Popen(
            [str(BIN / "rasp-agent"), "run", "--socket", str(sock), "--store", str(d / "ev.db"),
             "--no-driver"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        apps = []
        try:
            deadline = time.monotonic() + 20
            while not sock.exists():
                if time.monotonic() > deadline:
                    raise SystemExit("the agent did not start")
                time.sleep(0.05)
            with_p, with_port = start_app(exe, d)
            without_p, without_port = start_app(exe, d)
            apps = [with_p, without_p]
            t0 = time.perf_counter()
            res = subprocess.run(
                [str(BIN / "rasp-attach"), "--pid", str(with_p.pid), "--socket", str(sock)],
                capture_output=True, text=True,
            )  # fmt: skip
            attach_ms = (time.perf_counter() - t0) * 1000
            if res.returncode != 0:
                raise SystemExit(f"rasp-attach failed: {res.stderr}")
            wrk(with_port, 1, "/health")  # warm both
            wrk(without_port, 1, "/health")
            runs: dict[str, dict[str, list[tuple[float, float]]]] = {
                w: {"with": [], "without": []} for w in WORKLOADS
            }
            for _ in range(a.rounds):
                for w, route in WORKLOADS.items():
                    runs[w]["with"].append(measured(with_p.pid, with_port, a.seconds, route))
                    runs[w]["without"].append(
                        measured(without_p.pid, without_port, a.seconds, route)
                    )
            spin = {"with": [], "without": []}
            for _ in range(a.rounds):
                spin["with"].append(spin_ns(with_p.pid, with_port))
                spin["without"].append(spin_ns(without_p.pid, without_port))
            stats = json.loads(
                subprocess.run(
                    [str(BIN / "rasp-agent"), "status", "--json", "--socket", str(sock)],
                    capture_output=True, text=True, env=env,
                ).stdout or "{}"
            )  # fmt: skip
        finally:
            for p in apps:
                p.kill()
                p.wait()
            agent.terminate()
            agent.wait(20)
    med = statistics.median
    thr = {
        w: {
            "requests_per_s": {k: round(med(r for r, _ in v)) for k, v in runs[w].items()},
            "ratio": round(
                med(r for r, _ in runs[w]["with"]) / med(r for r, _ in runs[w]["without"]), 3
            ),
            "app_cpu_us_per_request": {
                k: round(med(c for _, c in v), 1) for k, v in runs[w].items()
            },
            "rounds": {k: [round(r) for r, _ in v] for k, v in runs[w].items()},
        }
        for w in WORKLOADS
    }
    hit_w = statistics.median(spin["with"])
    hit_wo = statistics.median(spin["without"])
    out = {
        **thr,
        "os_remove_cpu_ns": {"with": round(hit_w), "without": round(hit_wo)},
        "per_hit_us": round((hit_w - hit_wo) / 1000, 2),
        "attach_ms": round(attach_ms),
        "golang": stats.get("golang", {}),
    }
    if a.json:
        print(json.dumps(out))
        return
    for w in WORKLOADS:
        t = thr[w]
        print(
            f"go probe, {w} ({WORKLOADS[w]}): {t['requests_per_s']['without']} -> "
            f"{t['requests_per_s']['with']} req/s (ratio {t['ratio']}, goal >= 0.97); app CPU "
            f"per request {t['app_cpu_us_per_request']['without']} -> "
            f"{t['app_cpu_us_per_request']['with']} µs; rounds {t['rounds']}"
        )
    print(
        f"go probe: per uprobe hit {out['per_hit_us']} µs of app CPU (os.Remove {hit_wo:.0f} -> "
        f"{hit_w:.0f} ns); rasp-attach {attach_ms:.0f} ms; agent: {out['golang']}"
    )


if __name__ == "__main__":
    main()
