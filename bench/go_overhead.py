"""Go probe overhead, measured side by side in one run.

1. Throughput: two identical processes of the Go test app (tests/apps/golang/vulnapp, static
   build), the Go probe attached through a real agent (`rasp-attach`) to one of them; `wrk -t1
   -c8` on loopback, rounds alternated A/B/A/B; ratio = with / without (goal >= 0.97), and the
   app's CPU per request (utime + stime). Two workloads:
   - `/health`: a request that reaches no sink, the common case the goal is about (the
     probe's fixed cost per request: 1 uprobe hit, ServeHTTP, no record);
   - `/read?path=report.txt`: every request reaches a sink (os.ReadFile: a 2nd hit, the
     request's record and the event's, stored by the agent): the worst case.
   Ring-buffer drops (kernel) and queue drops (agent) are reported from `rasp-agent status`.
2. Per-hit cost of each program: a third app process, `/spin?n=N` (N x os.Remove of a
   missing file); this process loads the Go probe's object itself and attaches, in turn, no
   program, `go_empty` (an empty uprobe program: the floor, the trap alone), `go_serve_http`
   (the per-request program) and `go_path1` (a sink: os.Remove's own program, record
   included) at os.Remove, rounds interleaved. The app's CPU time (utime + stime, which holds
   the uprobe trap and the BPF program) per call, minus the no-program figure: the cost of
   one hit as the app pays it (the reader's work is in another process). CPU time rather than
   the wall-clock time the endpoint also reports: on a shared 2-core machine other processes
   inflate wall time, not CPU time.

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
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
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


#: per-hit variants: program attached at os.Remove (None: no uprobe)
PROGRAMS = {"none": None, "empty": "go_empty", "serve_http": "go_serve_http", "sink": "go_path1"}


def per_hit(exe: Path, cwd: Path, rounds: int) -> dict[str, object]:
    """App CPU ns per os.Remove call with each program of PROGRAMS attached there, rounds
    interleaved; the per-hit cost of a program is its figure minus "none"."""
    from rasp.golang import offsets as field_offsets
    from rasp.golang import symbols
    from rasp.golang.hooks import ALL_SYMBOLS
    from rasp.golang.uprobes import GoUprobes

    b = symbols.inspect(exe, ALL_SYMBOLS)
    minor = (symbols.parse_version(b.version) or (1, 26))[1]
    fields = field_offsets.resolve(str(exe), minor, b.has_dwarf).values
    p, port = start_app(exe, cwd)
    up = GoUprobes()
    ns: dict[str, list[float]] = {k: [] for k in PROGRAMS}
    try:
        up.load()
        spin_ns(p.pid, port)  # warm
        for _ in range(rounds):
            for name, prog in PROGRAMS.items():
                if prog:
                    up.attach_program(p.pid, str(exe), prog, b.offsets["os.Remove"], fields)
                try:
                    ns[name].append(spin_ns(p.pid, port))
                finally:
                    up.detach(p.pid)
        drops = up.kernel_drops()
    finally:
        up.stop()
        p.kill()
        p.wait()
    med = {k: statistics.median(v) for k, v in ns.items()}
    return {
        "os_remove_cpu_ns": {k: round(v) for k, v in med.items()},
        "per_hit_us": {
            k: round((v - med["none"]) / 1000, 2) for k, v in med.items() if k != "none"
        },
        "rounds_ns": {k: [round(x) for x in v] for k, v in ns.items()},
        "kernel_drops": drops,
    }


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
        hits = per_hit(exe, d, a.rounds)
        load = os.getloadavg()
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
    golang = stats.get("golang", {})
    out = {
        **thr,
        **hits,
        "attach_ms": round(attach_ms),
        "golang": golang,
        "loadavg": [round(x, 1) for x in load],
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
        "go probe: per uprobe hit, µs of app CPU over a plain os.Remove "
        f"({hits['os_remove_cpu_ns']['none']} ns): "  # type: ignore[index]
        + ", ".join(f"{k} {v}" for k, v in hits["per_hit_us"].items())  # type: ignore[attr-defined]
        + f" (ring drops {hits['kernel_drops']})"
    )
    print(
        f"go probe: rasp-attach {attach_ms:.0f} ms; agent: records {golang.get('received')}, "
        f"events {golang.get('events')}, ring drops {golang.get('kernel_drops')}, queue drops "
        f"{golang.get('queue_drops')}; load average {out['loadavg']}"
    )


if __name__ == "__main__":
    main()
