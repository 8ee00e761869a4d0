#!/usr/bin/env python3
"""Drives the CPython probe's hot path inside this interpreter and prints one JSON object:
what it queued, dropped, blocked, for the same calls, so that a run with the C accelerator
(rampart_probe/_accel) and one with RAMPART_PYTHON_ACCEL=0 can be compared field by field.
Used by tests/unit/test_python_probe_accel.py.

Usage: probe_accel_check.py PROBE_DIR WORKDIR [fault]
"""

import json
import os
import pickle
import socket
import sqlite3
import subprocess
import sys
import time

probe_dir, work = sys.argv[1], sys.argv[2]
sys.path.insert(0, probe_dir)
import rampart_probe  # noqa: E402
from rampart_probe import accel, context, core  # noqa: E402
from rampart_probe.detect import DetectTable  # noqa: E402
from rampart_probe.hooks import audit  # noqa: E402
from rampart_probe.rules import Quotas, RuleTable  # noqa: E402

out: dict = {}
p = rampart_probe.start(os.path.join(work, "no-agent.sock"), mode="sdk")
out["accel"] = accel.status
out["active"] = accel.active()
out["c_emit"] = type(p.emit).__name__ == "builtin_function_or_method"
out["c_sql"] = type(type(sqlite3.connect(":memory:").cursor()).execute).__name__ == "SqlMethod"

# the agent is gone (no socket): the shipper marks the probe away, calls are dropped and counted
deadline = time.time() + 10
while not p.away and time.time() < deadline:
    time.sleep(0.01)
os.system("true")
out["away"] = {"queued": len(p.queue), "dropped_by": dict(p.dropped_by)}

# from here the shipper is stopped: what is queued stays for the comparison
p.detached = True
p.wake.set()
p.thread.join(5)
p.detached = False
p.away = False
p.queue.clear()
p.dropped_by.clear()
p.dropped = 0
p.quotas = Quotas("q", [{"hook": "*", "per_minute": 10**6}])


def drain():
    got = []
    while p.queue:
        _, hook, kind, args, policy_id, req, stack = p.queue.popleft()
        got.append([hook, kind, args, policy_id, req, stack])
    return got


def calls(name):
    f = os.path.join(work, name)
    os.system("true")
    with open(f, "w") as fh:
        fh.write("x")
    open(f, "rb").close()
    open(f.encode()).close()  # a bytes path: the Python extractor and _s
    open(os.path.join(work, "mod.py"), "w").close()  # written: reported
    open(os.path.join(work, "mod.py")).close()  # a .py read: not reported
    os.close(os.open(f, os.O_RDONLY))  # mode None: the Python extractor
    subprocess.run(["true", "arg one", "x" * 5000], check=True)  # capped at ARG_MAX
    os.listdir(work)
    os.rename(f, f + ".2")
    os.remove(f + ".2")
    socket.getaddrinfo("127.0.0.1", 80)
    pickle.loads(pickle.dumps(ValueError("x")))
    exec(compile("y = 1", "<rampart-check>", "exec"), {})
    con = sqlite3.connect(":memory:")
    con.execute("create table t (x)")
    con.executemany("insert into t values (?)", [(1,), (2,)])
    con.execute("select x from t where x = ?", (1,)).fetchall()
    con.close()
    sys.audit("os.system", 12345)  # a non-str arg: normalised by _s


# same calls outside and inside a request, whole stacks and per-hook depth
calls("a.txt")
rounds = [drain()]
tok = context.current.set(
    context.Request(
        "GET", "http://t/x?q=1", "127.0.0.1", "q=1", {"user-agent": "check", "host": "t"}
    )
)
calls("b.txt")
rounds.append(drain())
p.stack_by_hook = {"open": 2, "os.system": 0}
calls("c.txt")
p.stack_by_hook = {}
context.current.reset(tok)
rounds.append(drain())
out["events"] = rounds


# the C stack walk against the Python one, same frame, same line; while the accelerator is
# active, the calls Python decides (block/filter/detect rules) walk the stack in C as well
def python_walk(depth):
    saved, core._c_stack = core._c_stack, None
    try:
        return core.capture_stack(depth, 2)  # from python_walk's caller
    finally:
        core._c_stack = saved


if accel.active():
    c_for_python_path = core._c_stack is not None
    c, py = accel.mod.capture_stack(100), python_walk(100)  # one line: one f_lineno
    out["stack_same"] = c == py and len(c) > 0 and c_for_python_path

# muted and disabled: nothing
p.hooks_disabled = {"os.system"}
os.system("true")
p.hooks_disabled = set()
p.enabled = False
os.system("true")
p.enabled = True
out["muted_queued"] = len(p.queue)

# block: a rule refuses os.system and an SQL statement before they run, others go on
p.blocks = RuleTable(
    "b",
    [
        {"policy_id": "no-forbidden", "hook": "os.system", "match": {"args": "forbidden"}},
        {"policy_id": "no-drop", "kind": "sql", "match": {"args": "(?i)drop table"}},
    ],
)
res: dict = {}
marker = os.path.join(work, "ran")
try:
    os.system("touch " + marker + " # forbidden")
except core.RampartBlocked as e:
    res["system"] = str(e)
res["system_ran"] = os.path.exists(marker)
res["allowed_rc"] = os.system("true")
con = sqlite3.connect(":memory:")
con.execute("create table t (x)")
try:
    con.execute("drop table t")
except core.RampartBlocked as e:
    res["sql"] = str(e)
res["table_left"] = con.execute("select count(*) from sqlite_master").fetchone()[0]
res["blocked"] = p.blocked
res["events"] = [[e[0], e[2], e[3]] for e in drain()]
out["block"] = res
p.blocks = RuleTable()

# detection in block mode, inside a request: the Python path decides, synchronously
p.detect = DetectTable([{"rule": "cmdi.input"}])
tok = context.current.set(
    context.Request("GET", "http://t/run?cmd=x;true", "127.0.0.1", "cmd=x;true", {})
)
try:
    os.system("true x;true")
    out["detect"] = "not blocked"
except core.RampartBlocked as e:
    out["detect"] = str(e)
context.current.reset(tok)
os.system("true")  # outside a request: no check
out["detect_events"] = [[e[0], e[2], e[3]] for e in drain()]
p.detect = DetectTable()

# quota: 3 os.listdir a minute, counted on the same Quotas object by both paths (a block
# rule that names the hook sends the last two calls through Python)
p.quotas = Quotas("q2", [{"hook": "os.listdir", "per_minute": 3}])
os.listdir(work)
os.listdir(work)
p.blocks = RuleTable("b2", [{"policy_id": "never", "hook": "os.listdir", "match": {"args": "^$"}}])
os.listdir(work)
os.listdir(work)
p.blocks = RuleTable()
out["quota"] = {"queued": len(drain()), "dropped_by": dict(p.dropped_by)}
p.dropped_by.clear()
p.quotas = Quotas("q", [{"hook": "*", "per_minute": 10**6}])

# filter rules drop without reporting; queue full drops and counts
quiet = {"policy_id": "quiet", "hook": "os.system", "match": {"args": "^true$"}}
p.filters = RuleTable("f", [quiet])
os.system("true")
os.system("true ")
sys.audit("os.remove", "/nonexistent/x")  # a hook no filter rule names: reported
p.filters = RuleTable()
out["filter"] = {"events": [e[2] for e in drain()], "dropped_by": dict(p.dropped_by)}
p.dropped_by.clear()
p.queue.extend([None] * core.QUEUE_MAX)
os.system("true")
out["queue_full"] = dict(p.dropped_by)
p.queue.clear()
p.dropped_by.clear()

if sys.argv[3:] == ["fault"] and accel.active():
    # an internal error in the accelerator: the app's call proceeds, the accelerator turns
    # itself off for good, the pure-Python path takes this call and every later one
    accel.mod.inject_fault()
    rc = os.system("true")
    first = drain()
    rc2 = os.system("true")
    sqlite3.connect(":memory:").execute("select 1")
    out["fault"] = {
        "rc": [rc, rc2],
        "active": accel.active(),
        "status": accel.status,
        "python_hook": audit._installed,
        "emit_is_python": "emit" not in p.__dict__,
        "stack_is_python": core._c_stack is None,
        "first": [e[0] for e in first],
        "later": [e[0] for e in drain()],
        "dropped_by": dict(p.dropped_by),
        "failed_once": sorted(p.failed_once),
    }
print(json.dumps(out))
