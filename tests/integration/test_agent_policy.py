"""Policies: pushed at hello, reloaded by SIGHUP or CLI, bad files never replace the policy."""

from __future__ import annotations

import signal

import pytest

from rasp.protocol.schema import Block, Filter, QuotaFrame
from tests.agentproc import AgentProc, wait_for

POLICY_V1 = """\
policies:
  - id: no-shell-from-web
    runtime: python
    kind: process
    hook: os.system
    match: {args: "(^|/)(sh|bash)\\\\b"}
    action: block
  - id: quiet-tmp
    kind: file
    match: {args: "^/tmp/"}
    action: ignore
  - id: watch-passwd
    kind: file
    match: {args: "/etc/passwd"}
    action: alert
quotas:
  - {hook: open, per_minute: 600}
"""

POLICY_V2 = """\
policies:
  - id: no-curl
    kind: process
    match: {args: "curl"}
    action: block
"""


def _policy_frames(p) -> tuple[Filter, Block, QuotaFrame]:
    frames = [p.recv(5) for _ in range(3)]
    by_type = {type(f): f for f in frames}
    return by_type[Filter], by_type[Block], by_type[QuotaFrame]


@pytest.fixture
def policed(agent_factory) -> AgentProc:
    a = agent_factory()
    a.policy.write_text(POLICY_V1)
    return a.start()


def test_policy_is_pushed_at_hello_for_the_probes_runtime(policed: AgentProc) -> None:
    with policed.probe(runtime="python") as p:
        p.hello()
        flt, blk, quota = _policy_frames(p)
    uuid = flt.data.uuid
    assert uuid == blk.data.uuid == quota.data.uuid
    (rule,) = blk.data.blocks
    assert rule.policy_id == "no-shell-from-web" and rule.hook == "os.system"
    assert rule.match.args == "(^|/)(sh|bash)\\b"
    assert [f.policy_id for f in flt.data.filters] == ["quiet-tmp"]
    assert {(q.hook, q.per_minute) for q in quota.data.quotas} == {("open", 600), ("*", 12000)}
    # a JVM probe gets no python-only block rule
    with policed.probe(runtime="jvm") as j:
        j.hello()
        _f, jblk, _q = _policy_frames(j)
        assert jblk.data.blocks == [] and jblk.data.uuid == uuid
    assert policed.control("policy.show")["uuid"] == uuid


def test_agent_side_ignore_and_alert(policed: AgentProc) -> None:
    with policed.probe() as p:
        p.hello()
        p.trace("open", "file", ["/tmp/noise"])
        p.trace("open", "file", ["/etc/passwd"])
        p.trace(
            "os.system", "process", ["/bin/sh -c id"], blocked=True, policy_id="no-shell-from-web"
        )
        p.trace("os.system", "process", ["bash -c id"])  # matched, but the probe did not block
        rows = policed.wait_rows(3)
    assert [r["args"][0] for r in rows] == ["/etc/passwd", "/bin/sh -c id", "bash -c id"]
    assert rows[0]["alerts"] == ["watch-passwd"]
    assert rows[1]["blocked"] is True and rows[1]["policy_id"] == "no-shell-from-web"
    assert rows[2]["alerts"] == ["no-shell-from-web"] and rows[2]["blocked"] is False
    stats = policed.control("stats")
    assert stats["ignored"] == 1 and stats["received"] == 4


def test_sighup_reload_pushes_the_new_version_to_connected_probes(policed: AgentProc) -> None:
    with policed.probe() as p:
        p.hello()
        old = _policy_frames(p)[1].data.uuid
        policed.policy.write_text(POLICY_V2)
        policed.proc.send_signal(signal.SIGHUP)
        _f, blk, _q = _policy_frames(p)
        assert blk.data.uuid != old
        assert [b.policy_id for b in blk.data.blocks] == ["no-curl"]
        row = wait_for(lambda: [r for r in policed.control("ps") if r["pid"] == p.pid])[0]
        assert row["policy_pushed"] == blk.data.uuid


def test_bad_policy_on_reload_keeps_the_old_one(policed: AgentProc) -> None:
    with policed.probe() as p:
        p.hello()
        old = _policy_frames(p)[1].data.uuid
        policed.policy.write_text("policies:\n  - id: broken\n    action: explode\n")
        res = policed.cli("policy", "reload", "--socket", str(policed.socket))
        assert res.returncode == 1
        assert f"{policed.policy}:3: policies.0.action:" in res.stderr
        assert f"policy {old} stays in force" in res.stderr
        # SIGHUP with the same bad file: logged, nothing pushed, old policy in force
        policed.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: policed.log_text().count("policy reload refused") == 2)
        assert policed.control("policy.show")["uuid"] == old
        with pytest.raises(TimeoutError):
            p.recv(0.5)
        # the CLI reload works once the file is good again
        policed.policy.write_text(POLICY_V2)
        res = policed.cli("policy", "reload", "--socket", str(policed.socket))
        assert res.returncode == 0, res.stderr
        new = _policy_frames(p)[1].data.uuid
        assert new != old and new in res.stdout
    show = policed.cli("policy", "show", "--socket", str(policed.socket))
    assert "no-curl" in show.stdout


def test_push_control_command_sends_one_frame_to_one_probe(policed: AgentProc) -> None:
    with policed.probe() as p:
        p.hello()
        _policy_frames(p)
        frame = {"message_type": 3, "data": {"uuid": "cfg-1", "stack_depth": 8}}
        assert policed.control("push", pid=p.pid, frame=frame) == {"sent": 1}
        cfg = p.recv(5)
        assert cfg.data.uuid == "cfg-1" and cfg.data.stack_depth == 8
    with pytest.raises(Exception, match="not a frame the agent may push"):
        policed.control("push", frame={"message_type": 2, "data": {}})


def test_policy_check_cli(policed: AgentProc, tmp_path) -> None:
    res = policed.cli("policy", "check", str(policed.policy))
    assert res.returncode == 0 and "3 policies" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies:\n  - id: a\n    action: alert\n  - id: a\n    action: alert\n")
    res = policed.cli("policy", "check", str(bad))
    assert res.returncode == 2 and f"{bad}:4: duplicate policy id 'a'" in res.stderr
