"""Bad input over real sockets: each bad peer gets a reason and is closed; the agent serves on."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from rasp.protocol.client import AgentRefused, ControlError
from rasp.protocol.gen_vectors import OUT as VECTORS_FILE
from tests.agentproc import RASP_AGENT, AgentProc, raw_client, wait_for

INVALID = [
    c for c in json.loads(VECTORS_FILE.read_text())["invalid"] if c["direction"] == "to_agent"
]


def _send_and_read(agent: AgentProc, data: bytes, eof: bool) -> tuple[list[dict], bool]:
    """Send raw bytes; return the frames the agent answered and whether it closed on us."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(agent.socket))
    s.sendall(data)
    if eof:
        s.shutdown(socket.SHUT_WR)
    s.settimeout(10)
    buf = b""
    closed = False
    while True:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            closed = True
            break
        buf += chunk
    s.close()
    frames = []
    while len(buf) >= 4:
        n = int.from_bytes(buf[:4], "big")
        frames.append(json.loads(buf[4 : 4 + n]))
        buf = buf[4 + n :]
    return frames, closed


def test_every_invalid_vector_is_refused_with_its_code_and_the_agent_serves_on(
    agent: AgentProc,
) -> None:
    # a healthy probe stays connected through all of it
    good = agent.probe()
    good.hello()
    for case in INVALID:
        data = bytes.fromhex(case["frame_hex"])
        # a truncated frame only shows at end of stream: the peer half-closes
        truncated = case["error"] == "truncated"
        frames, closed = _send_and_read(agent, data, eof=truncated)
        assert closed, case["name"]
        if not truncated:
            assert frames and frames[-1]["message_type"] == 99, case["name"]
            assert frames[-1]["data"]["code"] == case["error"], (case["name"], frames)
            assert frames[-1]["data"]["reason"]
        good.trace("open", "file", [case["name"]])
    rows = agent.wait_rows(len(INVALID))
    assert [r["args"][0] for r in rows] == [c["name"] for c in INVALID]
    refused = agent.control("stats")["refused"]
    for code in {c["error"] for c in INVALID}:
        assert refused.get(code, 0) >= 1, code
    log = agent.log_text()
    assert "too_large" in log and "bad_json" in log and "truncated" in log
    assert agent.alive()
    good.close()


def test_frame_over_the_configured_limit_closes_only_that_connection(agent_factory) -> None:
    a = agent_factory(env={"RAMPART_MAX_FRAME": "2048"}).start()
    with a.probe() as p:
        p.hello()
        big = p.trace_frame("open", "file", ["x" * 4000])
        p.send_raw(big)
        with pytest.raises(AgentRefused) as err:
            while True:
                p.recv(5)
        assert err.value.code == "too_large"
    with a.probe() as q:
        q.hello()
        q.trace("open", "file", ["small"])
        assert a.wait_rows(1)[0]["args"] == ["small"]


def test_silent_client_is_closed_after_the_hello_timeout(agent_factory) -> None:
    a = agent_factory(env={"RAMPART_HELLO_TIMEOUT": "0.5"}).start()
    frames, closed = _send_and_read(a, b"", eof=False)
    assert closed
    assert frames[-1]["data"]["code"] == "timeout"
    assert a.control("stats")["refused"]["timeout"] == 1


def test_trace_before_hello_is_refused(agent: AgentProc) -> None:
    with agent.probe() as p:
        p.trace("open", "file", ["/x"])
        with pytest.raises(AgentRefused) as err:
            p.recv(5)
        assert err.value.code == "protocol" and "hello" in err.value.reason


def test_hello_twice_is_refused(agent: AgentProc) -> None:
    with agent.probe() as p:
        p.hello()
        p.hello()
        with pytest.raises(AgentRefused) as err:
            while True:
                p.recv(5)
        assert err.value.code == "protocol"


@pytest.mark.slow
def test_flooding_client_is_throttled_without_losing_events(agent_factory) -> None:
    a = agent_factory(env={"RAMPART_CONN_RATE": "2000"}).start()
    n = 6000
    with a.probe() as flood:
        flood.hello()
        payload = b"".join(flood.trace_frame("open", "file", [str(i)]) for i in range(n))
        flood.send_raw(payload)
        # while it is throttled, everyone else is served: another process's probe, and control
        hello = {"message_type": 100, "pid": "self", "runtime": "php", "data": {"mode": "sdk"}}
        other = raw_client(a.socket, [hello])
        assert other[0]["message_type"] == 6  # its policy push: it was accepted
        assert a.control("ping")["pid"] == a.proc.pid
        rows = a.wait_rows(n, timeout=60)
    assert [r["args"][0] for r in rows] == [str(i) for i in range(n)]
    assert a.control("stats")["throttled"] >= 1
    assert "throttling" in a.log_text()


@pytest.mark.slow
def test_backlog_pauses_reads_instead_of_dropping(agent_factory) -> None:
    # a tiny queue limit and slow flushes force the global pause path
    a = agent_factory(env={"RAMPART_QUEUE_LIMIT": "100", "RAMPART_STORE_BATCH": "50"}).start()
    n = 3000
    with a.probe() as p:
        p.hello()
        p.send_raw(b"".join(p.trace_frame("open", "file", [str(i)]) for i in range(n)))
        rows = a.wait_rows(n, timeout=60)
    assert len(rows) == n
    assert a.control("stats")["backpressure"] >= 1


def test_unknown_control_command_gets_a_clear_error(agent: AgentProc) -> None:
    with pytest.raises(ControlError, match="unknown command 'reboot'; known: "):
        agent.control("reboot")
    with pytest.raises(ControlError, match="pid must be a positive integer"):
        agent.control("attach.expect", pid="x")
    with pytest.raises(ControlError, match="no such process"):
        agent.control("attach.expect", pid=2**22 + 12345)
    assert agent.control("ping")


def _agent_stderr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RASP_AGENT, *args], capture_output=True, text=True, timeout=60)


def test_bad_config_file_exits_2_naming_file_and_line(tmp_path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"socket: {tmp_path}/s.sock\nstore_batch: lots\n")
    res = _agent_stderr("run", "--config", str(cfg))
    assert res.returncode == 2
    assert f"{cfg}:2: store_batch:" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    cfg.write_text("sokcet: /tmp/x\n")
    res = _agent_stderr("run", "--config", str(cfg))
    assert res.returncode == 2 and f"{cfg}:1: unknown setting 'sokcet'" in res.stderr


def test_bad_policy_file_exits_2_naming_file_and_line(tmp_path) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text("policies:\n  - id: x\n    action: block\n    match: {args: '(unclosed'}\n")
    res = _agent_stderr(
        "run", "--socket", str(tmp_path / "s.sock"), "--store", str(tmp_path / "e.db"),
        "--policy", str(pol),
    )  # fmt: skip
    assert res.returncode == 2
    assert f"{pol}:4: policies.0.match.args: Value error, invalid regex" in res.stderr
    assert not (tmp_path / "s.sock").exists(), "nothing is left behind by a refused start"


def test_second_agent_on_the_same_socket_is_refused(agent: AgentProc) -> None:
    res = _agent_stderr("run", "--socket", str(agent.socket), "--store", str(agent.dir / "b.db"))
    assert res.returncode == 1
    assert "another agent is listening" in res.stderr
    assert agent.control("ping")


def test_stale_socket_from_a_killed_agent_is_replaced(agent_factory) -> None:
    a = agent_factory().start()
    a.proc.kill()
    a.proc.wait()
    assert a.socket.exists()
    a.start()
    assert a.control("ping")["pid"] == a.proc.pid


def test_socket_is_created_with_its_mode(agent_factory) -> None:
    a = agent_factory(env={"RAMPART_SOCKET_MODE": "0660"}).start()
    assert a.socket.stat().st_mode & 0o777 == 0o660
    b = agent_factory().start()
    assert b.socket.stat().st_mode & 0o777 == 0o666
    assert b.store.stat().st_mode & 0o777 == 0o600


def test_agent_survives_a_peer_that_vanishes_mid_frame(agent: AgentProc) -> None:
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(agent.socket))
        s.sendall(b'\x00\x00\x01\x00{"message_type":')
        s.close()
    time.sleep(0.2)
    wait_for(lambda: agent.control("stats")["refused"].get("truncated", 0) == 20)
    assert agent.alive()
