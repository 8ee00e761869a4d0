"""SO_PEERCRED authorisation with real peers of other uids and other pids."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rasp.protocol.client import AgentRefused
from tests.agentproc import AgentProc, raw_client, wait_for

NOBODY = 65534


def _hello(pid: object = "self", mode: str = "sdk") -> dict:
    return {"message_type": 100, "pid": pid, "runtime": "python", "data": {"mode": mode}}


def _trace(args: list[str], pid: object = "self") -> dict:
    return {
        "message_type": 2,
        "pid": pid,
        "runtime": "python",
        "data": {"hook": "os.system", "kind": "process", "args": args},
    }


def test_unprivileged_peer_may_report_for_itself(agent: AgentProc) -> None:
    got = raw_client(agent.socket, [_hello(), _trace(["from nobody"])], user=NOBODY)
    assert got[0]["message_type"] == 6, got  # accepted: the policy push arrived
    (row,) = agent.wait_rows(1)
    assert row["args"] == ["from nobody"]
    assert row["process"]["uid"] == NOBODY


def test_unprivileged_peer_may_not_send_control_commands(agent: AgentProc) -> None:
    for command in ("ps", "policy.reload", "push", "attach.expect"):
        got = raw_client(
            agent.socket,
            [{"message_type": 200, "data": {"id": 1, "command": command}}],
            user=NOBODY,
        )
        assert got[0]["data"] == {"code": "unauthorized", "reason": "control commands need root"}
        assert got[-1] == "EOF"


def test_no_peer_may_speak_for_another_pid(agent: AgentProc) -> None:
    # unprivileged, claiming to be the agent's own pid
    got = raw_client(agent.socket, [_hello(pid=agent.proc.pid)], user=NOBODY)
    assert got[0]["data"]["code"] == "unauthorized"
    assert f"hello for pid {agent.proc.pid}" in got[0]["data"]["reason"]
    # root is held to the same rule: the pid in every frame is checked against the peer
    got = raw_client(agent.socket, [_hello(pid=1)])
    assert got[0]["data"]["code"] == "unauthorized"
    # after a valid hello, a trace for someone else's pid closes the connection
    got = raw_client(agent.socket, [_hello(), _trace(["spoof"], pid=1)], user=NOBODY)
    assert got[-2]["data"]["code"] == "unauthorized" and got[-1] == "EOF"
    assert "frame for pid 1" in got[-2]["data"]["reason"]
    assert agent.rows() == []


def test_sdk_probes_can_be_limited_to_uids(agent_factory) -> None:
    a = agent_factory(env={"RAMPART_SDK_UIDS": "0"}).start()
    got = raw_client(a.socket, [_hello(), _trace(["x"])], user=NOBODY)
    assert got[0]["data"]["code"] == "unauthorized" and "sdk_uids" in got[0]["data"]["reason"]
    assert raw_client(a.socket, [_hello()])[0]["message_type"] == 6  # root is listed
    b = agent_factory(env={"RAMPART_SDK_ALLOW": "false"}).start()
    got = raw_client(b.socket, [_hello()])
    assert got[0]["data"]["code"] == "unauthorized" and "sdk_allow" in got[0]["data"]["reason"]


def test_attached_mode_needs_an_attach_recorded_by_the_agent(agent: AgentProc) -> None:
    with agent.probe(mode="attached") as p:
        p.hello()
        with pytest.raises(AgentRefused) as err:
            p.recv(5)
        assert err.value.code == "unauthorized" and "did not attach it" in err.value.reason

    # rasp-attach's path: expect, (inject), wait for the hello
    target = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert agent.control("attach.expect", pid=target.pid, runtime="python") == {
            "connected": False
        }
        hello = _hello(pid=target.pid, mode="attached")
        # only the target itself may use that record: another process is still refused
        assert raw_client(agent.socket, [hello])[0]["data"]["code"] == "unauthorized"
        with pytest.raises(Exception, match="no hello from pid"):
            agent.control("attach.wait", pid=target.pid, timeout=0.2)
    finally:
        target.kill()
        target.wait()
    # the record was for that process (pid + start time): once it is gone, it is forgotten
    with pytest.raises(Exception, match="no such process"):
        agent.control("attach.expect", pid=target.pid)


def test_attached_probe_recognised_after_agent_restart(agent_factory) -> None:
    a = agent_factory().start()
    a.control("attach.expect", pid=os.getpid(), runtime="python")
    with a.probe(mode="attached") as p:
        p.hello()
        assert p.recv(5).data.uuid  # accepted
    a.stop()
    a.start()
    with a.probe(mode="attached") as p:
        p.hello()
        assert p.recv(5).data.uuid  # still accepted: the attach record is in the store
        row = wait_for(lambda: [r for r in a.control("ps") if r["pid"] == os.getpid()])[0]
        assert row["mode"] == "attached"


def test_one_uid_cannot_hold_unbounded_connections(agent_factory) -> None:
    a = agent_factory(env={"RAMPART_MAX_CONNS_PER_UID": "2"}).start()
    frames = [_hello()]
    # three connections from nobody at once: the helper holds two open, the third is refused
    script = (
        "import socket,sys,time\n"
        "ss=[socket.socket(socket.AF_UNIX) for _ in range(3)]\n"
        "[s.connect(sys.argv[1]) for s in ss]\n"
        "ss[2].settimeout(5)\n"
        "print(ss[2].recv(4096)[4:].decode())\n"
    )
    res = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "/usr/bin/python3", "-c", script, str(a.socket)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert '"too_many_connections"' in res.stdout
    # root is not limited, and nobody can connect again once those are closed
    assert raw_client(a.socket, frames, user=NOBODY)[0]["message_type"] == 6
