#!/usr/bin/env python3
"""Cost of kernel enforcement (host_agent/enforce.py) for the processes it does not block.
Needs root and `make setup` (build/bpf/enforce.bpf.o).

The cgroup connect/sendmsg programs run for every connect on the host and the exec program
for every exec, so what matters is what they add to calls that go through:

- `connect`, unprotected: a C loop of TCP connects to a closed loopback port
  (bench/workloads/syscall_loop.c), enforcement not loaded / loaded, alternated, best of the
  rounds;
- `connect`, protected: the same loop in a process that *is* protected, with a policy of 30
  denied loopback CIDRs (60 rules with the v4-mapped twins), none matching: the full rule scan;
- `fork+exec`, unprotected: a loop of fork + exec of /bin/true.
Plus the kernel's own per-run figure for each program (kernel.bpf_stats_enabled).

    .venv/bin/python bench/enforce.py [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.driver import build, closed_port, run_loop  # noqa: E402
from host_agent.enforce import KernelEnforcer  # noqa: E402
from host_agent.policy import loads_policy  # noqa: E402

POLICY = "policies:\n  - id: bench-deny\n    kind: network\n    action: block\n"
# loopback ranges other than 127.0.0.0/16, so none matches the loop's 127.0.0.1 (all are scanned)
_CIDRS = ", ".join(f"127.{i}.0.0/16" for i in range(1, 31))
POLICY += f"    match: {{dest: [{_CIDRS}], port: [9]}}\n"


def start() -> KernelEnforcer:
    e = KernelEnforcer(mode="cgroup")
    if e.start(None) == "off":
        sys.exit(f"bench/enforce.py: enforcement cannot load here: {e.reason}")
    e.load_policy(loads_policy(POLICY))
    return e


def protected_loop(e: KernelEnforcer | None, binary: Path, *args: str) -> float:
    """The loop in a process protected before it starts: a Python stub is protected by pid,
    then execs the loop (same pid, same start time, so still protected)."""
    stub = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys; sys.stdin.readline(); os.execv(sys.argv[1], sys.argv[1:])",
            str(binary),
            *args,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if e is not None:
        e.protect(stub.pid, "golang")
    out, _ = stub.communicate("go\n", timeout=300)
    if e is not None:
        e.unprotect(stub.pid)
    return float(out)


def slowdown(rounds: int) -> list[dict]:
    binary = build()
    port = str(closed_port())
    cases = [
        ("connect, unprotected", lambda _e: run_loop("connect", "50000", port)),
        (
            "connect, protected, 60 rules",
            lambda e: protected_loop(e, binary, "connect", "50000", port),
        ),
        ("fork+exec, unprotected", lambda _e: run_loop("exec", "800")),
    ]
    out = []
    for name, fn in cases:
        off, on = [], []
        for _ in range(rounds):
            off.append(fn(None))
            e = start()
            try:
                on.append(fn(e))
            finally:
                e.stop()
        base, loaded = min(off), min(on)  # the least disturbed round: noise only adds time
        out.append(
            {
                "workload": name,
                "off_ns": round(base, 1),
                "on_ns": round(loaded, 1),
                "ratio": round(loaded / base, 3),
                "added_ns": round(loaded - base, 1),
            }
        )
    return out


def _prog_stats() -> dict[str, tuple[int, int]]:
    progs = json.loads(
        subprocess.run(
            ["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True
        ).stdout
    )
    return {
        p["name"]: (p.get("run_cnt", 0), p.get("run_time_ns", 0))
        for p in progs
        if p.get("name", "").startswith("rpe_")
    }


def program_costs() -> list[dict]:
    """Average run time of each program per phase, from the kernel's own statistics
    (kernel.bpf_stats_enabled): immune to the scheduling noise of a shared VM."""
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    stats.write_text("1")
    binary = build()
    port = str(closed_port())
    phases = [
        ("connect, unprotected", lambda e: run_loop("connect", "50000", port)),
        (
            "connect, protected, 60 rules",
            lambda e: protected_loop(e, binary, "connect", "50000", port),
        ),
        ("fork+exec, unprotected", lambda e: run_loop("exec", "800")),
    ]
    rows = []
    try:
        e = start()
        try:
            for name, fn in phases:
                before = _prog_stats()
                fn(e)
                after = _prog_stats()
                for prog, (cnt, ns) in after.items():
                    c0, n0 = before.get(prog, (0, 0))
                    if cnt - c0 > 100:  # the program this phase is about, not strays
                        rows.append(
                            {
                                "phase": name,
                                "program": prog,
                                "runs": cnt - c0,
                                "avg_ns": (ns - n0) // (cnt - c0),
                            }
                        )
        finally:
            e.stop()
    finally:
        stats.write_text(old)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/enforce.py: needs root (BPF)", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING)
    rows = slowdown(args.rounds)
    costs = program_costs()
    if args.json:
        print(json.dumps({"slowdown": rows, "programs": costs}))
        return 0
    print(f"kernel enforcement loaded / not loaded (best of {args.rounds} rounds, one run)")
    for r in rows:
        print(
            f"  {r['workload']:<30} {r['off_ns'] / 1000:8.2f} µs -> {r['on_ns'] / 1000:8.2f} µs"
            f"  x{r['ratio']:.3f} ({r['added_ns']:+.0f} ns)"
        )
    print("per program run (kernel bpf_stats)")
    for c in costs:
        print(f"  {c['phase']:<30} {c['program']:<14} {c['runs']:>8} runs {c['avg_ns']:>6} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
