#!/usr/bin/env python3
"""An attach helper with rasp-attach's command line, for auto-attach tests: records the
attach at the agent, "injects" by SIGUSR2 (tests/apps/python/cooperative_target.py), waits
for the hello. Exit codes and --json output as rasp-attach's (docs/cli.md)."""

import argparse
import json
import os
import signal
import sys

from rasp.protocol.client import ControlError, control


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--timeout", type=float, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        control(a.socket, "attach.expect", {"pid": a.pid, "runtime": "python"})
        os.kill(a.pid, signal.SIGUSR2)
        probe = control(
            a.socket, "attach.wait", {"pid": a.pid, "timeout": a.timeout}, a.timeout + 5
        )
    except (ControlError, OSError) as e:
        print(json.dumps({"pid": a.pid, "error": str(e), "exit": 5}))
        sys.exit(5)
    print(json.dumps({"pid": a.pid, "runtime": "python", "already": False, "probe": probe}))


if __name__ == "__main__":
    main()
