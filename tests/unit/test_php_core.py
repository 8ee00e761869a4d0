"""The PHP probe's pure logic (rasp/php/php_agent_core.js: framing, agent-frame decoding,
policy rules, quotas, query strings) run under node against the shared protocol vectors.
The same file is loaded into PHP processes by Frida, where it has no test harness."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rasp.php.php_agent import CORE_JS
from rasp.protocol.framing import FrameReader, decode_to_agent
from rasp.protocol.gen_vectors import OUT as VECTORS_PATH

VECTORS = json.loads(VECTORS_PATH.read_text())
HARNESS = Path(__file__).resolve().parents[1] / "apps" / "php" / "core_harness.js"
MAX = VECTORS["max_frame"]
FRAMING_ERRORS = {"truncated", "too_large", "bad_json", "not_object"}

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def run(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    res = subprocess.run(
        [str(NODE), str(HARNESS), str(CORE_JS)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_agent_frames_decode_like_the_vectors_say() -> None:
    valid = [v for v in VECTORS["valid"] if v["direction"] == "from_agent"]
    out = run([{"op": "decode", "hex": v["frame_hex"], "max_frame": MAX} for v in valid])
    for v, r in zip(valid, out, strict=True):
        assert "error" not in r, (v["name"], r)
        (msg,) = r["messages"]
        for key, value in v["message"].items():
            assert msg[key] == value, v["name"]


def test_bad_agent_frames_fail_with_the_shared_codes() -> None:
    # from_agent cases with their full classification; framing-level codes on every case
    cases = [
        v
        for v in VECTORS["invalid"]
        if v["direction"] == "from_agent" or v["error"] in FRAMING_ERRORS
    ]
    out = run([{"op": "decode", "hex": v["frame_hex"], "max_frame": MAX} for v in cases])
    for v, r in zip(cases, out, strict=True):
        assert r.get("error") == v["error"], (v["name"], r)


def test_probe_frames_we_encode_decode_the_same_at_the_agent() -> None:
    valid = [v for v in VECTORS["valid"] if v["direction"] == "to_agent"]
    out = run([{"op": "reencode", "hex": v["frame_hex"], "max_frame": MAX} for v in valid])
    for v, r in zip(valid, out, strict=True):
        ours = FrameReader(MAX).feed(bytes.fromhex(r["hex"]))
        theirs = FrameReader(MAX).feed(bytes.fromhex(v["frame_hex"]))
        assert decode_to_agent(ours[0]) == decode_to_agent(theirs[0]), v["name"]


def test_rules_quota_and_query_strings() -> None:
    ev = {
        "hook": "system",
        "kind": "process",
        "args": ["cat /etc/passwd", "x"],
        "stack": ["{main} (/srv/app.php:3)"],
    }
    rules = [
        {"policy_id": "py-only", "runtime": ["python"], "match": {"args": "passwd"}},
        {"policy_id": "bad-regex", "match": {"args": "("}},
        {"policy_id": "other-hook", "hook": "exec"},
        {"policy_id": "stack", "kind": "process", "match": {"stack": "app\\.php:\\d+"}},
    ]
    joined = [{"policy_id": "joined", "match": {"args": "passwd x$"}}]
    out = run(
        [
            {"op": "match", "rules": rules, "event": ev},
            {"op": "match", "rules": joined, "event": ev},
            {"op": "match", "rules": rules[:3], "event": ev},
            {
                "op": "quota",
                "default": 2,
                "quotas": [{"hook": "exec", "per_minute": 1}],
                "calls": [
                    ["system", 1000],
                    ["system", 1001],
                    ["system", 1002],
                    ["exec", 1003],
                    ["exec", 1004],
                    ["system", 61000],
                ],
            },
            {"op": "query", "qs": "a=1&a=2&b&c=x+y%21&=z"},
            {"op": "lenient", "hex": "61ff62c3a9"},
        ]
    )
    assert out[0] == {"policy_id": "stack", "compiled": 3}  # the bad regex is skipped
    assert out[1]["policy_id"] == "joined"
    assert out[2]["policy_id"] is None
    assert out[3]["allowed"] == [True, True, False, True, False, True]
    assert out[4]["params"] == {"a": ["1", "2"], "b": [""], "c": ["x y!"], "": ["z"]}
    assert out[5]["text"] == "a\ufffdbé"
