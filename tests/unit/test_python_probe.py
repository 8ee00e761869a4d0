"""The CPython probe's own logic: its wire codec against the shared vectors, its rule and
quota tables, and its behaviour inside real interpreters (3.8-3.13) against a stand-in
agent, with every frame it sent checked by the agent's decoder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rasp.protocol import ProtocolError, decode_to_agent
from tests.integration.pyprobe import interpreter

REPO = Path(__file__).resolve().parents[2]
PROBE_DIR = REPO / "rasp" / "python"
VECTORS = json.loads((REPO / "rasp" / "protocol" / "vectors" / "frames.json").read_text())
sys.path.insert(0, str(PROBE_DIR))

from rampart_probe import rules, wire  # noqa: E402

FRAMING_CODES = {"truncated", "too_large", "bad_json", "not_object"}


def _decode_stream(frame: bytes) -> dict:
    reader = wire.FrameReader(VECTORS["max_frame"])
    payloads = reader.feed(frame)
    reader.close()
    assert len(payloads) == 1
    return wire.decode_from_agent(payloads[0])


@pytest.mark.parametrize(
    "case", [v for v in VECTORS["valid"] if v["direction"] == "from_agent"], ids=lambda v: v["name"]
)
def test_decodes_every_valid_agent_frame(case) -> None:
    msg = _decode_stream(bytes.fromhex(case["frame_hex"]))
    assert msg == case["message"]
    assert _decode_stream(wire.encode(msg)) == msg


@pytest.mark.parametrize(
    "case",
    [
        v
        for v in VECTORS["invalid"]
        if v["direction"] == "from_agent" or v["error"] in FRAMING_CODES
    ],
    ids=lambda v: v["name"],
)
def test_refuses_every_invalid_agent_frame_with_its_code(case) -> None:
    with pytest.raises(wire.WireError) as err:
        _decode_stream(bytes.fromhex(case["frame_hex"]))
    assert err.value.code == case["error"]


@pytest.mark.parametrize(
    "case", [v for v in VECTORS["valid"] if v["direction"] == "to_agent"], ids=lambda v: v["name"]
)
def test_encodes_probe_frames_the_agent_decodes(case) -> None:
    frame = wire.encode(case["message"])
    assert decode_to_agent(frame[4:]) == decode_to_agent(bytes.fromhex(case["frame_hex"])[4:])


def test_trace_frames_built_from_parts_equal_whole_envelopes() -> None:
    env = {
        "message_type": 2,
        "pid": 7,
        "runtime": "python",
        "runtime_version": "3.8.18",
        "probe_version": "0.1.0",
    }
    prefix = wire.dumps(env)[:-1].encode() + b',"time":'
    data = {"hook": "open", "kind": "file", "args": ["/tmp/caf\u00e9"], "request": {"url": "/"}}
    stack = ["view (app.py:3)", "main (app.py:9)"]
    for _ in range(2):  # the second time, the stack's JSON comes from the cache
        frame = wire.encode_trace(prefix, 1764000000000, data, stack)
        whole = wire.encode({**env, "time": 1764000000000, "data": {**data, "stack": stack}})
        assert decode_to_agent(frame[4:]) == decode_to_agent(whole[4:])


def test_lone_surrogates_in_args_still_make_a_valid_frame() -> None:
    msg = {
        "message_type": 2,
        "pid": 7,
        "runtime": "python",
        "data": {"hook": "open", "kind": "file", "args": ["/tmp/\udcff"]},
    }
    decoded = decode_to_agent(wire.encode(msg)[4:])
    assert decoded.data.args == ["/tmp/?"]


# ---------------------------------------------------------------- rules and quotas


def _table(*specs: dict) -> rules.RuleTable:
    return rules.RuleTable("u", list(specs))


def test_rule_fields_must_all_match() -> None:
    t = _table(
        {"policy_id": "shell", "kind": "process", "hook": "os.system", "match": {"args": r"\bsh\b"}}
    )
    assert t.first_match("os.system", "process", ["sh", "-c", "id"], []) == "shell"
    assert t.first_match("os.system", "process", ["bash"], []) is None
    assert t.first_match("subprocess.Popen", "process", ["sh"], []) is None
    assert t.candidates("open") == []


def test_rule_args_are_joined_and_searched_stack_per_frame() -> None:
    t = _table({"policy_id": "p", "match": {"args": "a b", "stack": "^view "}})
    assert t.first_match("x", "file", ["a", "b"], ["helper (f.py:1)", "view (app.py:3)"]) == "p"
    assert t.first_match("x", "file", ["a", "b"], ["helper (f.py:1)"]) is None
    assert t.wants_stack


def test_rules_for_other_runtimes_are_left_out_and_order_is_kept() -> None:
    t = _table(
        {"policy_id": "jvm-only", "runtime": ["jvm"]},
        {"policy_id": "first", "hook": "open"},
        {"policy_id": "any"},
    )
    assert [r.policy_id for r in t.rules] == ["first", "any"]
    assert t.first_match("open", "file", [], []) == "first"
    assert t.first_match("exec", "code", [], []) == "any"
    assert _table().empty


def test_quota_per_hook_with_a_default_and_a_new_window_each_minute() -> None:
    q = rules.Quotas("q", [{"hook": "*", "per_minute": 2}, {"hook": "open", "per_minute": 1}])
    assert [q.allow("open", 100.0) for _ in range(2)] == [True, False]
    assert [q.allow("exec", 100.0) for _ in range(3)] == [True, True, False]
    assert q.allow("open", 161.0)  # a new minute
    assert rules.Quotas().default == 12000


# ---------------------------------------------------------------- inside real interpreters

VERSIONS = ["3.8", "3.11", "3.13"]


@pytest.mark.parametrize("version", VERSIONS)
def test_probe_inside_a_real_interpreter(version: str, tmp_path: Path) -> None:
    exe = sys.executable if version == "3.11" else interpreter(version)
    if exe is None:
        pytest.skip(f"no CPython {version} here")
    res = subprocess.run(
        [
            exe,
            str(REPO / "tests" / "apps" / "python" / "probe_selfcheck.py"),
            str(PROBE_DIR),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["blocked"] == ["RampartBlocked", "Rampart blocked os.system by policy no-forbidden"]
    assert out["allowed_rc"] == 0
    assert out["removed"] and not out["remove_hook_left"] and out["error_drops"] == 1
    assert out["quota_drops"] == 3 and out["filter_drops"] == 1
    assert out["child_hello_pid"] == out["child_pid"] != out["pid"]

    msgs = []
    for hexframe in out["frames"] + out["child_frames"]:
        try:
            msgs.append(decode_to_agent(bytes.fromhex(hexframe)[4:]))
        except ProtocolError as e:  # pragma: no cover - the assertion message is the point
            raise AssertionError(f"the agent refuses a probe frame: {e}: {hexframe}") from None
    hello = msgs[0]
    assert hello.data.mode == "sdk" and "os.system" in hello.data.hooks
    assert hello.runtime_version.startswith(version)
    traces = [m for m in msgs if type(m).__name__ == "Trace"]
    blocked = [t for t in traces if t.data.blocked]
    assert blocked[0].data.policy_id == "no-forbidden"
    assert blocked[0].data.args == ["echo forbidden"]
    assert traces[0].data.stack and "probe_selfcheck.py" in traces[0].data.stack[0]
    beat = [m for m in msgs[: len(out["frames"])] if type(m).__name__ == "Heartbeat"][-1]
    assert beat.data.blocked == 1 and beat.data.dropped_by["quota"] == 3
    assert beat.data.policies == {"block": "b1", "quota": "q1", "filter": "f1"}
    assert type(msgs[-1 - len(out["child_frames"])]).__name__ == "ProbeExit"
