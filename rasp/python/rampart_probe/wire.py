"""Frames on the probe socket, stdlib only (docs/protocol.md).

4-byte big-endian length, then UTF-8 JSON. The probe encodes probe->agent frames and
decodes agent->probe frames; both are tested against rasp/protocol/vectors/frames.json
(tests/unit/test_python_probe_wire.py), the same vectors the agent's msgspec decoder passes.
"""

from __future__ import annotations

import json
import struct

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20

EXIT, HEARTBEAT, TRACE, CONFIG, FILTER, BLOCK, QUOTA, ERROR, HELLO = 0, 1, 2, 3, 6, 7, 8, 99, 100
CONTROL_REPLY = 201
RUNTIMES = ("python", "jvm", "golang", "nodejs", "php")
KINDS = (
    "process",
    "file",
    "network",
    "dns",
    "sql",
    "code",
    "deserialization",
    "naming",
    "classload",
    "library",
)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class WireError(Exception):
    """A frame the probe cannot accept; `code` is one of the protocol's error codes."""

    def __init__(self, code: str, reason: str) -> None:
        Exception.__init__(self, f"{code}: {reason}")
        self.code = code
        self.reason = reason


dumps = _dumps


_stack_json: dict = {}  # tuple(stack) -> its JSON, for the stacks that repeat
_STACK_CACHE_MAX = 4096


def stack_json(stack: list) -> bytes:
    """The JSON of a stack; a hot call path repeats the same stack, so it is encoded once."""
    key = tuple(stack)
    got = _stack_json.get(key)
    if got is None:
        got = _dumps(stack).encode("utf-8", "replace")
        if len(_stack_json) >= _STACK_CACHE_MAX:
            _stack_json.clear()
        _stack_json[key] = got
    return got


def encode_trace(prefix: bytes, ms: int, data: dict, stack: list) -> bytes:
    """A trace frame from the envelope's constant prefix (`Probe.trace_prefix`), the event
    fields and its stack: the same message as encode() of the whole envelope, without
    rebuilding the envelope or re-encoding a stack seen before. `data` is never empty."""
    payload = b"".join(
        (
            prefix,
            str(ms).encode(),
            b',"data":',
            _dumps(data).encode("utf-8", "replace")[:-1],
            b',"stack":',
            stack_json(stack),
            b"}}",
        )
    )
    return HEADER.pack(len(payload)) + payload


def encode(message: dict) -> bytes:
    """One complete frame. Lone surrogates (from undecodable file names) become "?"."""
    payload = _dumps(message).encode("utf-8", "replace")
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into payloads; a length prefix over the limit fails at once."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list:
        buf = self.buf
        buf += data
        out = []
        off = 0
        while len(buf) - off >= 4:
            (n,) = HEADER.unpack_from(buf, off)
            if n > self.max_frame:
                raise WireError("too_large", f"frame of {n} bytes over the limit")
            if len(buf) - off - 4 < n:
                break
            out.append(bytes(buf[off + 4 : off + 4 + n]))
            off += 4 + n
        if off:
            del buf[:off]
        return out

    def close(self) -> None:
        if self.buf:
            n = len(self.buf)
            self.buf = bytearray()
            raise WireError("truncated", f"stream ended inside a frame ({n} bytes)")


def parse(payload: bytes) -> dict:
    """Bytes -> JSON object, or WireError(bad_json | not_object)."""
    if not payload:
        raise WireError("bad_json", "empty payload")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise WireError("bad_json", f"invalid UTF-8: {e}") from None
    except ValueError as e:
        raise WireError("bad_json", str(e)) from None
    if not isinstance(obj, dict):
        raise WireError("not_object", f"expected an object, got {type(obj).__name__}")
    return obj


# ------------------------------------------------------------------ agent -> probe validation


def _fail(where: str, what: str) -> WireError:
    return WireError("schema", f"{where}: {what}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(d: dict, key: str, where: str, required=False, lo=0, hi=None, nullable=False) -> None:
    if key not in d:
        if required:
            raise _fail(where, f"missing `{key}`")
        return
    v = d[key]
    if v is None and nullable:
        return
    if not isinstance(v, str) or len(v) < lo or (hi is not None and len(v) > hi):
        raise _fail(where, f"`{key}` must be a string of {lo}..{hi} characters")


def _list(d: dict, key: str, where: str) -> list:
    v = d.get(key, [])
    if not isinstance(v, list):
        raise _fail(where, f"`{key}` must be a list")
    return v


def _obj(d: dict, key: str, where: str, required=True) -> dict:
    if key not in d:
        if required:
            raise _fail(where, f"missing `{key}`")
        return {}
    v = d[key]
    if not isinstance(v, dict):
        raise _fail(where, f"`{key}` must be an object")
    return v


def _rule(r: object, where: str) -> None:
    if not isinstance(r, dict):
        raise _fail(where, "a rule must be an object")
    _str(r, "policy_id", where, required=True, lo=1, hi=256)
    rt = r.get("runtime")
    if rt is not None and (not isinstance(rt, list) or any(x not in RUNTIMES for x in rt)):
        raise _fail(where, "`runtime` must be a list of runtimes")
    k = r.get("kind")
    if k is not None and k not in KINDS:
        raise _fail(where, f"unknown kind {k!r}")
    _str(r, "hook", where, nullable=True)
    m = _obj(r, "match", where, required=False)
    _str(m, "args", where, hi=4096, nullable=True)
    _str(m, "stack", where, hi=4096, nullable=True)


def _uuid(data: dict, where: str) -> None:
    _str(data, "uuid", where, required=True, hi=64)


def _check_config(data: dict) -> None:
    _uuid(data, "config")
    if any(not isinstance(h, str) for h in _list(data, "hooks_disabled", "config")):
        raise _fail("config", "`hooks_disabled` must be strings")
    sd = data.get("stack_depth")
    if sd is not None and (not _is_int(sd) or not 0 <= sd <= 256):
        raise _fail("config", "`stack_depth` must be 0..256")
    _obj(data, "settings", "config", required=False)


def _check_filter(data: dict) -> None:
    _uuid(data, "filter")
    for r in _list(data, "filters", "filter"):
        _rule(r, "filter")


def _check_block(data: dict) -> None:
    _uuid(data, "block")
    for r in _list(data, "blocks", "block"):
        _rule(r, "block")


def _check_quota(data: dict) -> None:
    _uuid(data, "quota")
    for q in _list(data, "quotas", "quota"):
        if not isinstance(q, dict):
            raise _fail("quota", "a quota must be an object")
        _str(q, "hook", "quota", required=True, lo=1, hi=256)
        n = q.get("per_minute")
        if not _is_int(n) or n < 0:
            raise _fail("quota", "`per_minute` must be an integer >= 0")


def _check_exit(data: dict) -> None:
    _str(data, "reason", "exit")


def _check_error(data: dict) -> None:
    _str(data, "code", "error", required=True)
    _str(data, "reason", "error", required=True)


def _check_reply(data: dict) -> None:
    if not _is_int(data.get("id")):
        raise _fail("control reply", "`id` must be an integer")
    if not isinstance(data.get("ok"), bool):
        raise _fail("control reply", "`ok` must be a boolean")


#: message_type -> (data required, checker)
_FROM_AGENT = {
    EXIT: (False, _check_exit),
    CONFIG: (True, _check_config),
    FILTER: (True, _check_filter),
    BLOCK: (True, _check_block),
    QUOTA: (True, _check_quota),
    ERROR: (True, _check_error),
    CONTROL_REPLY: (True, _check_reply),
}


def decode_from_agent(payload: bytes) -> dict:
    """Parse and check one agent->probe payload; unknown fields are ignored."""
    msg = parse(payload)
    if "message_type" not in msg:
        raise _fail("frame", "missing `message_type`")
    mt = msg["message_type"]
    if not _is_int(mt):
        raise _fail("frame", "`message_type` must be an integer")
    spec = _FROM_AGENT.get(mt)
    if spec is None:
        raise WireError("unknown_type", f"message_type {mt} is not sent by the agent")
    required, check = spec
    if "data" not in msg and not required:
        return msg
    check(_obj(msg, "data", "frame"))
    return msg
