"""Framing and decoding: 4-byte big-endian length, then that many bytes of UTF-8 JSON.

Every failure is a `ProtocolError` with a stable `code` (the same codes appear in the shared
vectors, so every language reports a bad frame the same way) and a human `reason`.
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from rasp.protocol.schema import FromAgent, ToAgent

HEADER: Final = struct.Struct(">I")
DEFAULT_MAX_FRAME: Final = 1 << 20  # 1 MiB (design §3)

#: Stable error codes, shared with the vectors and every language's decoder.
ERROR_CODES: Final = (
    "truncated",  # the stream ended inside a frame
    "too_large",  # the length prefix exceeds the frame limit
    "bad_json",  # empty payload, invalid UTF-8 or invalid JSON
    "not_object",  # the JSON is valid but not an object
    "unknown_type",  # message_type is not one this direction accepts
    "schema",  # a field is missing, of the wrong type, or out of range
)


class ProtocolError(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


_encoder = msgspec.json.Encoder()
_to_agent = msgspec.json.Decoder(ToAgent)
_from_agent = msgspec.json.Decoder(FromAgent)


def encode_payload(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def encode(message: msgspec.Struct) -> bytes:
    """One complete frame: length prefix + compact JSON."""
    payload = _encoder.encode(message)
    return HEADER.pack(len(payload)) + payload


def frame(payload: bytes) -> bytes:
    """Prefix an already encoded JSON payload with its length."""
    return HEADER.pack(len(payload)) + payload


def _classify(exc: Exception, payload: bytes | memoryview) -> ProtocolError:
    msg = str(exc)
    # ValidationError subclasses DecodeError in msgspec, so it is tested first.
    if isinstance(exc, msgspec.ValidationError):
        if msg.startswith("Expected `object`, got"):
            return ProtocolError("not_object", msg)
        if msg.startswith("Invalid value") and msg.endswith("at `$.message_type`"):
            return ProtocolError("unknown_type", msg)
        return ProtocolError("schema", msg)
    if not payload:
        return ProtocolError("bad_json", "empty payload")
    if isinstance(exc, UnicodeDecodeError):
        return ProtocolError("bad_json", f"invalid UTF-8: {msg}")
    return ProtocolError("bad_json", msg)


_DECODE_ERRORS = (msgspec.MsgspecError, UnicodeDecodeError)


def decode_to_agent(payload: bytes | memoryview) -> ToAgent:
    """Decode one payload sent to the agent (probe frames and control requests)."""
    try:
        return _to_agent.decode(payload)
    except _DECODE_ERRORS as exc:
        raise _classify(exc, payload) from None


def decode_from_agent(payload: bytes | memoryview) -> FromAgent:
    """Decode one payload sent by the agent (what a probe or a CLI client receives)."""
    try:
        return _from_agent.decode(payload)
    except _DECODE_ERRORS as exc:
        raise _classify(exc, payload) from None


class FrameReader:
    """Incremental splitter of a byte stream into frame payloads.

    It never buffers more than one frame's worth beyond the limit: a length prefix over the
    limit raises before the body is read, so a peer cannot make the agent allocate it.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        off = 0
        end = len(buf)
        while end - off >= 4:
            (length,) = HEADER.unpack_from(buf, off)
            if length > self.max_frame:
                raise ProtocolError(
                    "too_large", f"frame of {length} bytes exceeds the {self.max_frame}-byte limit"
                )
            if end - off - 4 < length:
                break
            out.append(bytes(buf[off + 4 : off + 4 + length]))
            off += 4 + length
        if off:
            del buf[:off]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        """Call at end of stream: a partial frame left over is an error."""
        if self._buf:
            n = len(self._buf)
            self._buf.clear()
            raise ProtocolError("truncated", f"stream ended inside a frame ({n} bytes pending)")
