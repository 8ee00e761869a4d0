"""Host rules on real driver events: victims the test starts, the eBPF driver loaded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.agentproc import AgentProc, wait_for

VICTIM = textwrap.dedent(
    """
    import os, socket, subprocess, sys, time
    print(os.getpid(), flush=True)
    # 1. a runtime starting a shell (subprocess with shell=True)
    subprocess.run("exec sleep 0.3", shell=True, check=True)
    # 2. a shell whose stdin and stdout are a socket (a reverse shell's shape, no network)
    a, b = socket.socketpair()
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 1"], stdin=a, stdout=a)
    p.wait()
    # 3. a program executed from a memfd
    fd = os.memfd_create("payload")
    with open("/bin/true", "rb") as f:
        os.write(fd, f.read())
    pid = os.fork()
    if pid == 0:
        os.execv(f"/proc/self/fd/{fd}", ["payload"])
    os.waitpid(pid, 0)
    print("done", flush=True)
    """
)


def test_host_rules_fire_on_real_driver_events(agent_factory) -> None:
    a: AgentProc = agent_factory(env={"RAMPART_DRIVER": "on"}).start()
    victim = subprocess.run(
        [sys.executable, "-c", VICTIM], capture_output=True, text=True, timeout=60, check=True
    )
    vpid, done = victim.stdout.split()
    assert done == "done"

    def found() -> dict[str, list]:
        # only the victim's own children: other processes on this host run shells too
        rows = [
            r
            for r in a.rows("runtime = 'kernel' AND alerted = 1")
            if r["driver"].get("ppid") == int(vpid)
        ]
        out: dict[str, list] = {}
        for r in rows:
            for d in r.get("detections", []):
                out.setdefault(d["rule"], []).append((r, d))
        return out

    want = {"host.shell-from-runtime", "host.reverse-shell", "host.memfd-exec"}
    hits = wait_for(lambda: (f := found()) and want <= set(f) and f, 30, "the three host rules")
    shells = {" ".join(r["args"]): d["message"] for r, d in hits["host.shell-from-runtime"]}
    # the shell that exec'd sleep at once still counts (its own exec path is /bin/sh)
    assert f"python3.11 (pid {vpid}) started sh" in shells["/bin/sh -c exec sleep 0.3"]
    ((reverse, _),) = hits["host.reverse-shell"]
    assert reverse["args"] == ["/bin/sh", "-c", "sleep 1"]
    ((memfd, why),) = hits["host.memfd-exec"]
    assert memfd["args"] == ["payload"] and why["message"].startswith("exec from memory: /proc/")
    alerts = a.cli("alerts", "--store", str(a.store), "--json", "--rule", "host.reverse-shell")
    assert json.loads(alerts.stdout.splitlines()[0])["pid"] == reverse["pid"]
