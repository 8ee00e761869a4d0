"""Generate the shared protocol vectors (`vectors/frames.json`).

The cases are written out literally here, as JSON-able dicts or raw bytes, and framed by hand:
they do not go through our encoder, so they test it rather than mirror it. Every language's
decoder must accept each valid frame (and decode it to `message`) and refuse each invalid one
with the given `error` code. Run `python -m rasp.protocol.gen_vectors` after changing a case;
a test fails when the committed file differs from what this script writes.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("vectors") / "frames.json"
MAX_FRAME = 1 << 20
T = 1764000000000  # a fixed time in ms


def _frame(payload: bytes, length: int | None = None) -> str:
    n = len(payload) if length is None else length
    return (struct.pack(">I", n) + payload).hex()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _env(mt: int, data: Any = None, **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"message_type": mt, "pid": 4242, "runtime": "python"}
    env.update(extra)
    if data is not None:
        env["data"] = data
    return env


TRACE_FULL = {
    "hook": "os.system",
    "kind": "process",
    "args": ["ls -la /tmp; id"],
    "stack": ["handler(app.py:42)", "dispatch(flask/app.py:1820)"],
    "blocked": True,
    "policy_id": "no-shell-from-web",
    "request": {
        "method": "GET",
        "url": "http://127.0.0.1:8000/run?cmd=ls",
        "remote_addr": "127.0.0.1:51234",
        "params": {"cmd": ["ls -la /tmp; id"], "a": ["1", "2"]},
        "headers": {"user-agent": "curl/8.0", "content-type": "text/plain"},
    },
    "ret": "0",
    "class_id": 0,
    "method_id": 1,
}

# (name, direction, message) — the payload is `message` encoded as compact JSON.
VALID: list[tuple[str, str, dict[str, Any]]] = [
    (
        "hello_attached",
        "to_agent",
        _env(
            100,
            {"mode": "attached", "hooks": ["os.system", "open"], "nspid": 7, "protocol_version": 1},
            runtime_version="3.11.7",
            probe_version="0.1.0",
            time=T,
        ),
    ),
    ("hello_sdk_minimal", "to_agent", _env(100, {"mode": "sdk"}, runtime="nodejs")),
    (
        "hello_already_running",
        "to_agent",
        _env(100, {"mode": "attached", "already_running": True}, runtime="jvm"),
    ),
    (
        "heartbeat_full",
        "to_agent",
        _env(
            1,
            {
                "sent": 1200,
                "dropped": 3,
                "blocked": 1,
                "dropped_by": {"queue_full": 2, "quota": 1},
                "policies": {"block": "6f1c2a8e-0000-5000-8000-000000000001", "filter": ""},
                "queue": 17,
            },
            time=T,
        ),
    ),
    ("heartbeat_without_data", "to_agent", _env(1, runtime="golang")),
    ("trace_full", "to_agent", _env(2, TRACE_FULL, runtime_version="3.11.7", time=T)),
    ("trace_minimal", "to_agent", _env(2, {"hook": "open", "kind": "file"})),
    (
        "trace_unicode_args",
        "to_agent",
        _env(
            2,
            {
                "hook": "open",
                "kind": "file",
                "args": ["/tmp/caf\u00e9 \u2603 \U0001f600", "a\u0000b"],
            },
        ),
    ),
    (
        "trace_every_kind_name_is_a_string",
        "to_agent",
        _env(2, {"hook": "javax.naming.InitialContext.lookup", "kind": "naming"}, runtime="jvm"),
    ),
    ("probe_exit", "to_agent", _env(0, {"reason": "interpreter shutdown"})),
    ("control_request", "to_agent", {"message_type": 200, "data": {"id": 1, "command": "ps"}}),
    (
        "control_request_with_args",
        "to_agent",
        {"message_type": 200, "data": {"id": 9, "command": "attach.expect", "args": {"pid": 77}}},
    ),
    (
        "config",
        "from_agent",
        {
            "message_type": 3,
            "data": {"uuid": "c0", "hooks_disabled": ["open"], "stack_depth": 16, "settings": {}},
        },
    ),
    (
        "filter",
        "from_agent",
        {
            "message_type": 6,
            "data": {
                "uuid": "f1",
                "filters": [
                    {"policy_id": "quiet-tmp", "kind": "file", "match": {"args": "^/tmp/"}}
                ],
            },
        },
    ),
    (
        "block",
        "from_agent",
        {
            "message_type": 7,
            "data": {
                "uuid": "b1",
                "blocks": [
                    {
                        "policy_id": "no-shell-from-web",
                        "runtime": ["python"],
                        "kind": "process",
                        "hook": "os.system",
                        "match": {"args": "(^|/)(sh|bash)\\b", "stack": "views\\.py"},
                    }
                ],
            },
        },
    ),
    ("block_empty_table", "from_agent", {"message_type": 7, "data": {"uuid": "", "blocks": []}}),
    (
        "block_with_detect",
        "from_agent",
        {
            "message_type": 7,
            "data": {
                "uuid": "b2",
                "blocks": [],
                "detect": [
                    {"rule": "sqli.input"},
                    {"rule": "cmdi.input", "exempt": [{"request_path": "^/admin/"}]},
                    {
                        "rule": "path.traversal",
                        "exempt": [{"path": "^/srv/app/tmp/.*$", "args": "report"}],
                    },
                    {"rule": "ssrf.internal"},
                    {"rule": "sqli.stacked"},
                    {"rule": "a.rule-this-probe-does-not-know"},
                ],
            },
        },
    ),
    (
        "quota",
        "from_agent",
        {
            "message_type": 8,
            "data": {
                "uuid": "q1",
                "quotas": [{"hook": "*", "per_minute": 12000}, {"hook": "open", "per_minute": 600}],
            },
        },
    ),
    ("agent_exit", "from_agent", {"message_type": 0, "data": {"reason": "detach"}}),
    (
        "error",
        "from_agent",
        {
            "message_type": 99,
            "data": {"code": "schema", "reason": "Object missing required field `pid`"},
        },
    ),
    (
        "control_reply",
        "from_agent",
        {"message_type": 201, "data": {"id": 1, "ok": True, "result": [{"pid": 4242}]}},
    ),
]

# Valid frames whose payload is not the compact encoding of `message`: field order, extra
# fields, whitespace. (name, direction, payload bytes, message after decoding)
VALID_RAW: list[tuple[str, str, bytes, dict[str, Any]]] = [
    (
        "message_type_last_and_whitespace",
        "to_agent",
        b'{ "pid": 4242, "runtime": "python",\n'
        b' "data": {"kind": "dns", "hook": "socket.getaddrinfo"}, "message_type": 2 }',
        _env(2, {"hook": "socket.getaddrinfo", "kind": "dns"}),
    ),
    (
        "unknown_fields_are_ignored",
        "to_agent",
        _json(
            _env(
                2,
                {"hook": "open", "kind": "file", "kwargs": {"mode": "r"}},
                process_info={"sid": 1},
            )
        ),
        _env(2, {"hook": "open", "kind": "file"}),
    ),
]

# (name, direction, frame bytes as hex, error code)
INVALID: list[tuple[str, str, str, str]] = [
    ("empty_payload", "to_agent", _frame(b""), "bad_json"),
    ("not_json", "to_agent", _frame(b"hello"), "bad_json"),
    ("json_cut_short", "to_agent", _frame(b'{"message_type":2,"pid":1'), "bad_json"),
    (
        "invalid_utf8_in_string",
        "to_agent",
        _frame(b'{"message_type":2,"pid":1,"runtime":"php","data":{"hook":"\xff","kind":"file"}}'),
        "bad_json",
    ),
    ("top_level_array", "to_agent", _frame(b"[1,2,3]"), "not_object"),
    ("top_level_string", "to_agent", _frame(b'"trace"'), "not_object"),
    ("unknown_message_type", "to_agent", _frame(_json(_env(42, {}))), "unknown_type"),
    (
        "agent_frame_sent_by_a_probe",
        "to_agent",
        _frame(_json({"message_type": 7, "data": {"uuid": "x", "blocks": []}})),
        "unknown_type",
    ),
    (
        "message_type_as_string",
        "to_agent",
        _frame(_json(_env("2", {"hook": "a", "kind": "file"}))),
        "schema",
    ),
    (
        "missing_message_type",
        "to_agent",
        _frame(b'{"pid":1,"runtime":"python","data":{}}'),
        "schema",
    ),
    (
        "missing_pid",
        "to_agent",
        _frame(
            _json({"message_type": 2, "runtime": "python", "data": {"hook": "a", "kind": "file"}})
        ),
        "schema",
    ),
    ("pid_zero", "to_agent", _frame(_json(_env(100, {"mode": "sdk"}, pid=0))), "schema"),
    ("pid_negative", "to_agent", _frame(_json(_env(100, {"mode": "sdk"}, pid=-5))), "schema"),
    (
        "pid_float",
        "to_agent",
        _frame(b'{"message_type":100,"pid":1.5,"runtime":"python","data":{"mode":"sdk"}}'),
        "schema",
    ),
    (
        "pid_bool",
        "to_agent",
        _frame(b'{"message_type":100,"pid":true,"runtime":"python","data":{"mode":"sdk"}}'),
        "schema",
    ),
    (
        "unknown_runtime",
        "to_agent",
        _frame(_json(_env(100, {"mode": "sdk"}, runtime="ruby"))),
        "schema",
    ),
    ("negative_time", "to_agent", _frame(_json(_env(1, {}, time=-1))), "schema"),
    ("trace_without_data", "to_agent", _frame(_json(_env(2))), "schema"),
    (
        "trace_unknown_kind",
        "to_agent",
        _frame(_json(_env(2, {"hook": "a", "kind": "magic"}))),
        "schema",
    ),
    (
        "trace_empty_hook",
        "to_agent",
        _frame(_json(_env(2, {"hook": "", "kind": "file"}))),
        "schema",
    ),
    (
        "trace_args_not_strings",
        "to_agent",
        _frame(_json(_env(2, {"hook": "a", "kind": "file", "args": ["ok", 3]}))),
        "schema",
    ),
    (
        "trace_params_not_lists",
        "to_agent",
        _frame(_json(_env(2, {"hook": "a", "kind": "sql", "request": {"params": {"id": "1"}}}))),
        "schema",
    ),
    ("hello_bad_mode", "to_agent", _frame(_json(_env(100, {"mode": "injected"}))), "schema"),
    ("heartbeat_negative_counter", "to_agent", _frame(_json(_env(1, {"sent": -1}))), "schema"),
    (
        "control_without_command",
        "to_agent",
        _frame(_json({"message_type": 200, "data": {"id": 1}})),
        "schema",
    ),
    # The length prefix is checked before the body is read: the 4 bytes alone must be refused.
    ("length_over_limit", "to_agent", struct.pack(">I", MAX_FRAME + 1).hex(), "too_large"),
    ("length_huge", "to_agent", "ffffffff", "too_large"),
    # The stream ends (EOF) before the announced length arrives.
    ("body_shorter_than_length", "to_agent", _frame(b'{"message_type":1}', length=50), "truncated"),
    ("partial_length_prefix", "to_agent", "0000", "truncated"),
    (
        "block_without_uuid",
        "from_agent",
        _frame(_json({"message_type": 7, "data": {"blocks": []}})),
        "schema",
    ),
    (
        "probe_frame_sent_by_the_agent",
        "from_agent",
        _frame(_json(_env(2, {"hook": "a", "kind": "file"}))),
        "unknown_type",
    ),
    (
        "quota_negative",
        "from_agent",
        _frame(
            _json(
                {
                    "message_type": 8,
                    "data": {"uuid": "q", "quotas": [{"hook": "*", "per_minute": -1}]},
                }
            )
        ),
        "schema",
    ),
]


def build() -> dict[str, Any]:
    valid = [
        {"name": n, "direction": d, "frame_hex": _frame(_json(m)), "message": m}
        for n, d, m in VALID
    ]
    valid += [
        {"name": n, "direction": d, "frame_hex": _frame(p), "message": m}
        for n, d, p, m in VALID_RAW
    ]
    invalid = [{"name": n, "direction": d, "frame_hex": h, "error": e} for n, d, h, e in INVALID]
    names = [c["name"] for c in valid + invalid]
    assert len(names) == len(set(names)), "vector names must be unique"
    return {
        "$comment": "GENERATED by `python -m rasp.protocol.gen_vectors`; edit the cases there. "
        "See docs/protocol.md for how to use these vectors.",
        "max_frame": MAX_FRAME,
        "error_codes": [
            "truncated",
            "too_large",
            "bad_json",
            "not_object",
            "unknown_type",
            "schema",
        ],
        "valid": valid,
        "invalid": invalid,
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=True) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
