#!/usr/bin/env python3
"""Drives the CPython probe inside this interpreter (any CPython 3.8-3.13) against a
stand-in agent (a bare Unix listener in this process), and prints one JSON object:
the frames the probe sent (hex, to be checked with the agent's own decoder by the test)
and what the app saw. Used by tests/unit/test_python_probe_inprocess.py.

Usage: probe_selfcheck.py PROBE_DIR WORKDIR
"""

import json
import os
import socket
import struct
import sys
import time

probe_dir, work = sys.argv[1], sys.argv[2]
sys.path.insert(0, probe_dir)
import rampart_probe  # noqa: E402
from rampart_probe.hooks import audit  # noqa: E402

path = os.path.join(work, "agent.sock")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(4)
srv.settimeout(10)
out = {"frames": [], "child_frames": []}


def stage(name):
    sys.stderr.write(f"stage: {name}\n")


def read_frame(conn):
    head = b""
    while len(head) < 4:
        got = conn.recv(4 - len(head))
        if not got:
            return None
        head += got
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        body += conn.recv(n - len(body))
    return head + body


def frames_until(conn, pred, sink):
    while True:
        f = read_frame(conn)
        if f is None:
            raise SystemExit("probe closed the connection")
        sink.append(f.hex())
        msg = json.loads(f[4:].decode())
        if pred(msg):
            return msg


def send(conn, message):
    body = json.dumps(message).encode()
    conn.sendall(struct.pack(">I", len(body)) + body)


def is_trace(hook, **kw):
    def pred(m):
        d = m.get("data") or {}
        return (
            m["message_type"] == 2
            and d.get("hook") == hook
            and all(d.get(k) == v for k, v in kw.items())
        )

    return pred


probe = rampart_probe.start(path, mode="sdk")
conn, _ = srv.accept()
conn.settimeout(10)
frames = out["frames"]
frames_until(conn, lambda m: m["message_type"] == 100, frames)

stage("event")
# an event: os.system through a reference bound before the probe existed
from os import system  # noqa: E402

system("true")
frames_until(conn, is_trace("os.system"), frames)

stage("block")
# block table: the refused call raises the probe's PermissionError, the others run
send(
    conn,
    {
        "message_type": 7,
        "data": {
            "uuid": "b1",
            "blocks": [
                {"policy_id": "no-forbidden", "hook": "os.system", "match": {"args": "forbidden"}}
            ],
        },
    },
)
deadline = time.time() + 10
while probe.blocks.uuid != "b1" and time.time() < deadline:
    time.sleep(0.01)
try:
    system("echo forbidden")
    out["blocked"] = None
except PermissionError as e:
    out["blocked"] = [type(e).__name__, str(e)]
out["allowed_rc"] = system("true")
frames_until(conn, is_trace("os.system", blocked=True), frames)

stage("fail")
# a hook that fails internally disables itself; the app's call still happens
victim = os.path.join(work, "victim")
open(victim, "w").close()


def broken(args):
    raise ValueError("boom")


audit._table["os.remove"] = ("file", broken, False)
os.remove(victim)
out["removed"] = not os.path.exists(victim)
out["remove_hook_left"] = "os.remove" in audit._table
out["error_drops"] = probe.dropped_by.get("error", 0)

stage("quota")
# quota: 2 os.listdir events a minute are reported, the rest dropped and counted
send(
    conn,
    {
        "message_type": 8,
        "data": {"uuid": "q1", "quotas": [{"hook": "os.listdir", "per_minute": 2}]},
    },
)
while probe.quotas.uuid != "q1" and time.time() < deadline:
    time.sleep(0.01)
for _ in range(5):
    os.listdir(work)
out["quota_drops"] = probe.dropped_by.get("quota", 0)

stage("filter")
# filter: matching events never leave the process
send(
    conn,
    {
        "message_type": 6,
        "data": {
            "uuid": "f1",
            "filters": [{"policy_id": "quiet", "kind": "file", "match": {"args": "quiet-me"}}],
        },
    },
)
while probe.filters.uuid != "f1" and time.time() < deadline:
    time.sleep(0.01)
open(os.path.join(work, "quiet-me"), "w").close()
out["filter_drops"] = probe.dropped_by.get("filter", 0)

stage("fork")
# fork: the child opens its own connection with its own pid and a fresh hello
if hasattr(os, "fork"):
    pid = os.fork()
    if pid == 0:
        system("true")
        time.sleep(0.5)
        os._exit(0)
    child, _ = srv.accept()
    child.settimeout(10)
    hello = frames_until(child, lambda m: m["message_type"] == 100, out["child_frames"])
    frames_until(child, is_trace("os.system"), out["child_frames"])
    out["child_pid"] = pid
    out["child_hello_pid"] = hello["pid"]
    os.waitpid(pid, 0)

stage("heartbeat")
# a heartbeat with the counters and the tables in force, then exit at shutdown
probe.kick()  # reconnect now: a fresh hello (already_running) and a heartbeat right after
conn2, _ = srv.accept()
conn2.settimeout(10)
frames_until(conn2, lambda m: m["message_type"] == 1, frames)
rampart_probe.stop()
frames_until(conn2, lambda m: m["message_type"] == 0, frames)
out["pid"] = os.getpid()
print(json.dumps(out))
