"""Rampart wire protocol (design §3): schema, framing, shared vectors."""

from rasp.protocol.framing import (
    DEFAULT_MAX_FRAME,
    ERROR_CODES,
    FrameReader,
    ProtocolError,
    decode_from_agent,
    decode_to_agent,
    encode,
    encode_payload,
    frame,
)
from rasp.protocol.schema import KINDS, PROTOCOL_VERSION, RUNTIMES, MessageType

__all__ = [
    "DEFAULT_MAX_FRAME",
    "ERROR_CODES",
    "KINDS",
    "PROTOCOL_VERSION",
    "RUNTIMES",
    "FrameReader",
    "MessageType",
    "ProtocolError",
    "decode_from_agent",
    "decode_to_agent",
    "encode",
    "encode_payload",
    "frame",
]
