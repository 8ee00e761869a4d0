#!/usr/bin/env python3
"""JVM probe overhead: the JDK HttpServer test app with and without the probe, same run.

Two JVMs run tests/apps/jvm/VulnApp.java side by side; one is attached live. wrk drives each
in turn (alternating rounds, so drift hits both) on:

- `/ok`: a request that reaches no sink (the request-context bracket only),
- `/read`: a request that opens a file (one `file` event per request, with request context);
  with the default quota (12,000 events per hook and minute) only the first 12,000 calls of
  each minute build and ship an event, so a run's cost depends on where in the minute it falls;
- `/read, no quota`: the same with the quota lifted: every request builds and ships its event.

Each run reports requests per second and the JVM's CPU time per request (utime + stime of the
whole process from /proc/<pid>/stat, sender thread, GC and JIT included, over the requests wrk
counted): on a shared machine CPU per request moves far less than throughput does.

Also reported: attach latency split into its parts (attach listener start by SIGQUIT, the
`load` command = agentmain incl. retransforming the hooked JDK classes, first hello at the
agent), a second attach's `load` (listener already up), and the in-JVM cost of one hooked
call (`/repeat`: n FileInputStream opens in a loop, ns per open): once the default quota
(12,000/min) is spent; with the quota lifted and an `ignore` rule, so every call builds its
event (args, 32-frame stack) and drops it; and with every event shipped to the agent.
Throughput runs with the default policy (no rules, default quota).
Goals (issue 4): throughput ratio >= 0.99, attach <= 100 ms plus retransform time.

    .venv/bin/python bench/jvm_overhead.py [--duration 5] [--rounds 3] [--json]
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

from injector.attach_jvm import AGENT_JAR, _check_reply, _ids, _request, start_listener  # noqa: E402
from rasp.protocol.client import control  # noqa: E402
from tests.agentproc import AgentProc, wait_for  # noqa: E402

#: pushed before the per-call measurement, so every call builds and queues a full event
NO_QUOTA = {
    "message_type": 8,
    "data": {"uuid": "bench-no-quota", "quotas": [{"hook": "*", "per_minute": 100_000_000}]},
}

#: the probe's default quota back (docs/probe-contract.md)
DEFAULT_QUOTA = {
    "message_type": 8,
    "data": {"uuid": "bench-default-quota", "quotas": [{"hook": "*", "per_minute": 12_000}]},
}

#: an `ignore` rule for the measured hook: the event is built (args, stack) then dropped in
#: the probe, so the figure is the app thread's cost without the sender and the agent
#: competing for the same two cores
FILTER_OPENS = {
    "message_type": 6,
    "data": {
        "uuid": "bench-filter",
        "filters": [{"policy_id": "bench", "hook": "java.io.FileInputStream.<init>"}],
    },
}
NO_FILTER = {"message_type": 6, "data": {"uuid": "", "filters": []}}


def start_jvm(classes: Path, stderr: Path) -> tuple[subprocess.Popen[bytes], int]:
    with open(stderr, "wb") as err:
        p = subprocess.Popen(
            ["java", "-Dsun.net.httpserver.nodelay=true", "-cp", str(classes), "VulnApp"],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    assert p.stdout is not None
    return p, int(p.stdout.readline().split()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, path: str, duration: float, connections: int) -> tuple[float, int]:
    """(requests per second, requests served)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(duration)}s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not m or not n or errors:
        raise SystemExit(f"wrk failed or saw errors:\n{out}")
    return float(m.group(1)), int(n.group(1))


def measured(
    pid: int, port: int, path: str, duration: float, connections: int
) -> tuple[float, float]:
    """(requests per second, the JVM's CPU time per request in µs) of one wrk run."""
    c0 = cpu_seconds(pid)
    rate, n = wrk(port, path, duration, connections)
    return rate, (cpu_seconds(pid) - c0) / n * 1e6


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.read().decode()


def attach_timed(agent: AgentProc, pid: int, jar: Path, timeout: float = 10.0) -> dict[str, float]:
    """The attacher's steps one by one, timed (same code path as rasp-attach)."""
    control(agent.socket, "attach.expect", {"pid": pid, "runtime": "jvm"})
    ids = _ids(pid)
    t0 = time.perf_counter()
    sock = start_listener(pid, ids.nspid, timeout)
    t1 = time.perf_counter()
    options = f"action=attach;socket={agent.socket}"
    _check_reply(pid, _request(sock, ["load", "instrument", "false", f"{jar}={options}"], 10))
    t2 = time.perf_counter()
    control(agent.socket, "attach.wait", {"pid": pid, "timeout": timeout}, timeout=timeout + 5)
    t3 = time.perf_counter()
    return {
        "listener_ms": (t1 - t0) * 1e3,
        "load_ms": (t2 - t1) * 1e3,
        "hello_ms": (t3 - t2) * 1e3,
        "total_ms": (t3 - t0) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--throughput-only",
        action="store_true",
        help="only the side-by-side throughput and CPU per request (JSON), for quick A/B loops",
    )
    ap.add_argument(
        "--jar", type=Path, default=AGENT_JAR, help="agent jar (e.g. an older build to compare)"
    )
    args = ap.parse_args()
    jar = args.jar.resolve()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: run `make setup`")
    if not jar.is_file():
        raise SystemExit(f"{jar} missing: run `make setup`")

    work = Path(tempfile.mkdtemp(prefix="rampart-bench-jvm-"))
    classes = work / "classes"
    subprocess.run(
        ["javac", "-d", str(classes), str(REPO / "tests/apps/jvm/VulnApp.java")], check=True
    )
    data = work / "data.txt"
    data.write_text("hello\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    # the probe is measured, not the eBPF driver: on a busy machine the driver's stream of
    # every process's events slows the agent's answers (attach.wait) and takes CPU from both
    env["RAMPART_DRIVER"] = "off"
    agent = AgentProc(
        dir=work,
        socket=work / "probe.sock",
        store=work / "events.db",
        jsonl=work / "events.jsonl",
        policy=work / "policy.yaml",
        log=work / "agent.log",
        env=env,
    )
    agent.start()
    jvms: list[subprocess.Popen[bytes]] = []
    try:
        plain, plain_port = start_jvm(classes, work / "plain.err")
        probed, probed_port = start_jvm(classes, work / "probed.err")
        jvms += [plain, probed]
        time.sleep(1.0)  # let both finish start-up work before the first attach
        first = attach_timed(agent, probed.pid, jar)
        # the probe logs its own start-up time and the retransform part of it
        m = re.search(
            r"started \(attached\) in (\d+) ms, retransform (\d+) ms",
            (work / "probed.err").read_text(),
        )
        if m:
            first["agentmain_ms"], first["retransform_ms"] = float(m[1]), float(m[2])
        # a second attach: the listener is up and the probe answers "already running"
        ids = _ids(probed.pid)
        t0 = time.perf_counter()
        sock = start_listener(probed.pid, ids.nspid, 10)
        _request(sock, ["load", "instrument", "false", f"{jar}=action=attach"], 10)
        second_load_ms = (time.perf_counter() - t0) * 1e3

        read = f"/read?path={data}"
        for port in (plain_port, probed_port):  # JIT warm-up
            wrk(port, "/ok", 2, args.connections)
            wrk(port, read, 2, args.connections)

        results: dict[str, dict[str, object]] = {}
        load_before = os.getloadavg()[0]
        cases = (("/ok", "/ok"), ("/read", read), ("/read, no quota", read))
        for name, path in cases:
            if name == "/read, no quota":
                # every request builds and ships its event (with the default quota, only the
                # first 12,000 calls of each minute do: a run's cost depends on where in the
                # minute it falls)
                control(agent.socket, "push", {"frame": NO_QUOTA, "pid": probed.pid})
                time.sleep(0.5)
            runs: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
            for i in range(args.rounds):
                # alternate which JVM goes first, so a drift in the machine's load hits both
                order = [("without", plain.pid, plain_port), ("with", probed.pid, probed_port)]
                for key, pid, port in order if i % 2 == 0 else order[::-1]:
                    runs[key].append(measured(pid, port, path, args.duration, args.connections))
            base = [r for r, _ in runs["without"]]
            with_probe = [r for r, _ in runs["with"]]
            cpu_b = statistics.median(c for _, c in runs["without"])
            cpu_w = statistics.median(c for _, c in runs["with"])
            results[name] = {
                "without": base,
                "with": with_probe,
                "ratio": statistics.median(with_probe) / statistics.median(base),
                "cpu_us_per_request": {"without": cpu_b, "with": cpu_w},
                "cpu_ratio": cpu_b / cpu_w,
            }
        control(agent.socket, "push", {"frame": DEFAULT_QUOTA, "pid": probed.pid})
        load_avg = (load_before, os.getloadavg()[0])
        if args.throughput_only:
            print(json.dumps({"throughput": results, "load_average": load_avg}))
            return

        repeat = f"/repeat?n=20000&path={data}"
        for port in (plain_port, probed_port):
            get(port, repeat)  # warm-up; spends the probe's default quota (12,000/min)
        ns_plain = statistics.median(int(get(plain_port, repeat)) for _ in range(5))
        ns_over_quota = statistics.median(int(get(probed_port, repeat)) for _ in range(5))
        control(agent.socket, "push", {"frame": NO_QUOTA, "pid": probed.pid})
        control(agent.socket, "push", {"frame": FILTER_OPENS, "pid": probed.pid})
        time.sleep(0.5)
        ns_built = statistics.median(int(get(probed_port, repeat)) for _ in range(5))
        control(agent.socket, "push", {"frame": NO_FILTER, "pid": probed.pid})
        time.sleep(0.5)
        ns_probe = statistics.median(int(get(probed_port, repeat)) for _ in range(5))
        wait_for(lambda: agent.rows("id < 2"), 10, "events stored")
        ps = next(r for r in control(agent.socket, "ps") if r["pid"] == probed.pid)
    finally:
        for p in jvms:
            p.kill()
            p.wait()
            Path(f"/tmp/.java_pid{p.pid}").unlink(missing_ok=True)
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "attach": first,
        "second_load_ms": second_load_ms,
        "throughput": results,
        "load_average": load_avg,
        "hooked_open_ns": {
            "without": ns_plain,
            "event_built_then_filtered": ns_built,
            "with_event_shipped": ns_probe,
            "over_quota": ns_over_quota,
        },
        "probe_counters": {k: ps.get(k) for k in ("events", "sent", "drops", "dropped_by")},
    }
    if args.json:
        print(json.dumps(report))
        return
    a = first
    print(
        f"attach: listener {a['listener_ms']:.1f} ms + load (agentmain, retransform) "
        f"{a['load_ms']:.1f} ms + hello {a['hello_ms']:.1f} ms = {a['total_ms']:.1f} ms; "
        f"second load {second_load_ms:.1f} ms"
    )
    if "retransform_ms" in a:
        print(
            f"  inside the JVM: probe start {a['agentmain_ms']:.0f} ms, "
            f"of which retransforming loaded classes {a['retransform_ms']:.0f} ms"
        )
    print(f"load average {load_avg[0]:.1f} before the throughput runs, {load_avg[1]:.1f} after")
    for name, r in results.items():
        base, with_probe, cpu = r["without"], r["with"], r["cpu_us_per_request"]
        print(
            f"{name:15} req/s without {statistics.median(base):9.0f}  with "  # type: ignore[arg-type]
            f"{statistics.median(with_probe):9.0f}  ratio {r['ratio']:.3f};"  # type: ignore[arg-type]
            f"  JVM CPU per request {cpu['without']:.1f} -> {cpu['with']:.1f} µs"  # type: ignore[index]
            f"  (ratio {r['cpu_ratio']:.3f})"
        )
    print(f"hooked FileInputStream open, ns per call: {ns_plain:.0f} without probe;")
    print(f"  over quota      {ns_over_quota:8.0f} (+{ns_over_quota - ns_plain:.0f})")
    print(f"  event built     {ns_built:8.0f} (+{ns_built - ns_plain:.0f}; args, stack, filtered)")
    print(f"  event shipped   {ns_probe:8.0f} (+{ns_probe - ns_plain:.0f}; sender and agent busy)")
    print(f"probe counters: {report['probe_counters']}")


if __name__ == "__main__":
    main()
