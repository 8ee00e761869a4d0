"""The CPython probe's stack capture: text and line numbers equal to the interpreter's own,
from its cache too, the probe's frames left out; the filter that needs no stack deciding
before any stack is captured; the event's dict built from the queued call. 3.8-3.13."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.pyprobe import interpreter

PROBE_DIR = Path(__file__).resolve().parents[2] / "rasp" / "python"

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from rampart_probe import core
from rampart_probe.rules import Quotas, RuleTable

def expected(skip):
    f, out = sys._getframe(skip), []
    while f is not None:
        out.append("%s (%s:%d)" % (f.f_code.co_name, f.f_code.co_filename, f.f_lineno))
        f = f.f_back
    return out

def inner(depth):
    stack, want = core.capture_stack(depth, 1), expected(1)  # one line: one f_lineno
    return stack, want

def outer(n, depth):
    if n:
        return outer(
            n - 1, depth)
    return [x for x in [inner(depth)]][0]

got, want = outer(5, 100)
again, want_again = outer(5, 100)  # from the cache this time
short, _ = outer(5, 3)

p = core.Probe("/nonexistent", "sdk")
p.away = False
p.quotas = Quotas("q", [{"hook": "*", "per_minute": 10 ** 6}])
calls = []
real = core.capture_stack
core.capture_stack = lambda *a: calls.append(a) or real(*a)
p.filters = RuleTable("f", [{"policy_id": "quiet", "hook": "h", "match": {"args": "^x$"}}])
p.emit("h", "file", ["x"])
filtered = (len(p.queue), dict(p.dropped_by), len(calls))
p.emit("h", "file", ["y"])
ms, data, stack = core._event(p.queue.popleft())
print(json.dumps({"got": got, "want": want, "again": again, "want_again": want_again,
                  "short": short, "filtered": filtered, "captured": len(calls), "data": data,
                  "stack": stack}))
"""


@pytest.mark.parametrize("version", ["3.8", "3.10", "3.11", "3.13"])
def test_stack_text_matches_the_interpreter_and_filters_skip_the_stack(version) -> None:
    python = interpreter(version) if version != "3.11" else sys.executable
    if python is None:
        pytest.skip(f"no CPython {version}")
    res = subprocess.run(
        [python, "-c", SCRIPT, str(PROBE_DIR)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    # every frame above capture_stack's caller, with the interpreter's line numbers
    assert r["got"] == r["want"] and r["again"] == r["want_again"]
    assert r["got"][0].startswith("inner (")
    assert sum(f.startswith("outer (") for f in r["got"]) == 6
    assert r["short"] == r["want"][:3]
    # a filter that needs no stack drops the call before any stack is captured
    assert r["filtered"] == [0, {"filter": 1}, 0]
    # a reported call: its stack captured once, no probe frame in it
    assert r["captured"] == 1
    assert r["data"] == {"hook": "h", "kind": "file", "args": ["y"]}
    assert r["stack"] and r["stack"][0].startswith("<module> (<string>:")
    assert not [f for f in r["stack"] if str(PROBE_DIR) in f]
