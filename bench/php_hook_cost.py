"""PHP probe: the cost of one hooked call, side by side in one run.

Three php CLI processes run tests/apps/php/calls.php (a loop of `file_get_contents`, a hooked
sink, from a user function): one without the probe, one with the probe as it ships (C
collector), one with `RASP_PHP_NATIVE=0` (arguments and stacks read from JS). Each round asks
every process in turn for `--calls` calls and reads back the time per call (PHP's hrtime);
the best round of each is printed with the difference to the process without the probe. The
default quota (12,000 events per hook and minute) bounds how many calls are reported:
--rounds x --calls stays under it.

Usage: .venv/bin/python bench/php_hook_cost.py [--rounds 7] [--calls 1000]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rasp.php import php_agent  # noqa: E402
from tests.agentproc import AgentProc  # noqa: E402

CALLS = REPO / "tests" / "apps" / "php" / "calls.php"


def start() -> subprocess.Popen[str]:
    p = subprocess.Popen(
        ["php", str(CALLS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def per_call_us(p: subprocess.Popen[str], calls: int) -> float:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(f"{calls}\n")
    return int(p.stdout.readline()) / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args()
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: reap Frida's helper
    with tempfile.TemporaryDirectory(prefix="rampart-php-hook-") as td:
        d = Path(td)
        agent = AgentProc(
            dir=d,
            socket=d / "probe.sock",
            store=d / "events.db",
            jsonl=d / "events.jsonl",
            policy=d / "policy.yaml",
            log=d / "agent.log",
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")},
                "RAMPART_DRIVER": "off",
            },
        ).start()
        procs: dict[str, subprocess.Popen[str]] = {}
        try:
            for name, native in (("without", None), ("C collector", "1"), ("JS readers", "0")):
                procs[name] = p = start()
                if native is None:
                    continue
                os.environ["RASP_PHP_NATIVE"] = native
                agent.control("attach.expect", pid=p.pid, runtime="php")
                php_agent.load(p.pid, agent.socket)
            os.environ.pop("RASP_PHP_NATIVE", None)
            for p in procs.values():
                per_call_us(p, 200)  # warm up (the first events find offsets)
            best = {name: float("inf") for name in procs}
            for _ in range(args.rounds):
                for name, p in procs.items():
                    best[name] = min(best[name], per_call_us(p, args.calls))
            base = best["without"]
            print(f"file_get_contents, best of {args.rounds} x {args.calls} calls:")
            print(f"  without the probe {base:6.2f} us a call")
            for name in ("C collector", "JS readers"):
                print(f"  {name:17s} {best[name]:6.2f} us a call (+{best[name] - base:.2f} us)")
        finally:
            for p in procs.values():
                p.kill()
                p.wait()
            agent.stop()


if __name__ == "__main__":
    main()
