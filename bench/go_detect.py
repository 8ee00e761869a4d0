"""Cost of the Go probe's in-kernel detection check (rasp/golang/bpf/go_detect.h) per sink hit.

One Go test app (tests/apps/golang/vulnapp, static build) under the real uprobes (loaded
directly, as the agent does), `/spin?n=N` calling os.Remove on a missing file N times inside
a request: every call is a sink hit of a goroutine serving a request. Rounds alternate the
check off (no rule in block mode for the pid: the program's fast path, one map lookup) and on
(`path.traversal` in block mode: the request's query is read, URL-decoded and each value
searched in the path; nothing is found, so nothing is blocked). The app's CPU time (utime +
stime, which holds the uprobe trap and the BPF program) per call; the median of the rounds,
and the difference: what the check adds per hit. Two queries: a short one (`n=5000` and one
benign parameter) and a long one (8 parameters of ~60 bytes, the most values the check reads).

    .venv/bin/python bench/go_detect.py [--rounds 5] [--json]

Needs root (uprobes) and `go`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.go_overhead import build, cpu_s, start_app  # noqa: E402
from rasp.golang import offsets as field_offsets  # noqa: E402
from rasp.golang import symbols  # noqa: E402
from rasp.golang.detectcfg import kernel_detect  # noqa: E402
from rasp.golang.hooks import ALL_SYMBOLS, HOOKS  # noqa: E402
from rasp.golang.uprobes import GoUprobes  # noqa: E402
from rasp.protocol.schema import DetectRule  # noqa: E402

SPIN_N = 5000
SPIN_CALLS = 10
QUERIES = {
    "short": {"name": "alice smith"},
    "long": {f"p{i}": f"value-{i}-" + "abcdefghij" * 5 for i in range(8)},
}


def per_call_ns(pid: int, port: int, extra: dict[str, str]) -> float:
    q = urllib.parse.urlencode({"n": SPIN_N, **extra})
    c = cpu_s(pid)
    for _ in range(SPIN_CALLS):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/spin?{q}") as r:
            r.read()
    return (cpu_s(pid) - c) / (SPIN_CALLS * SPIN_N) * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rampart-go-detect-") as td:
        exe = build(Path(td))
        proc, port = start_app(exe, Path(td))
        up = GoUprobes()
        try:
            up.load()
            info = symbols.inspect(exe, ALL_SYMBOLS)
            offs = field_offsets.resolve(info.path, 26, info.has_dwarf)
            by_hook = {}
            for i, h in enumerate(HOOKS):
                found = [info.offsets[s] for s in h.symbols if s in info.offsets]
                if found:
                    by_hook[i] = found[0]
            up.attach(proc.pid, f"/proc/{proc.pid}/exe", by_hook, offs.values)
            on = kernel_detect([DetectRule(rule="path.traversal")]).config()
            res: dict[str, dict[str, list[float]]] = {q: {"off": [], "on": []} for q in QUERIES}
            for _ in range(args.rounds):
                for name, extra in QUERIES.items():
                    for mode in ("off", "on"):
                        up.set_detect(proc.pid, on if mode == "on" else None)
                        up.take()
                        res[name][mode].append(per_call_ns(proc.pid, port, extra))
                        up.take()  # the records are not the measure: keep the queue short
        finally:
            up.stop()
            proc.kill()
            proc.wait()
    out = {"load_avg": os.getloadavg()[0], "rounds": args.rounds, "spin_n": SPIN_N}
    for name in QUERIES:
        off = statistics.median(res[name]["off"])
        on_ = statistics.median(res[name]["on"])
        out[name] = {"hit_ns_check_off": round(off), "hit_ns_check_on": round(on_),
                     "added_ns": round(on_ - off)}  # fmt: skip
    if args.json:
        print(json.dumps(out))
        return
    print(f"load average {out['load_avg']:.1f}, {args.rounds} rounds, median app CPU per hit:")
    for name in QUERIES:
        r = out[name]
        print(f"  {name:5} query: check off {r['hit_ns_check_off']} ns, on "
              f"{r['hit_ns_check_on']} ns, added {r['added_ns']} ns")  # fmt: skip


if __name__ == "__main__":
    main()
