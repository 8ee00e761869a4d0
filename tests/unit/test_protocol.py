"""The Python encoder/decoder against the shared vectors, plus framing edge cases."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rasp.protocol import (
    DEFAULT_MAX_FRAME,
    ERROR_CODES,
    FrameReader,
    ProtocolError,
    decode_from_agent,
    decode_to_agent,
    encode,
    frame,
    gen_schema,
    gen_vectors,
)
from rasp.protocol.schema import FromAgent, ToAgent, Trace, TraceData

VECTORS = json.loads(gen_vectors.OUT.read_text())
DECODERS = {"to_agent": (decode_to_agent, ToAgent), "from_agent": (decode_from_agent, FromAgent)}


def _decode_stream(direction: str, data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> list:
    """Decode a whole stream the way the agent does: split, decode, and check EOF."""
    decode, _ = DECODERS[direction]
    reader = FrameReader(max_frame)
    out = [decode(p) for p in reader.feed(data)]
    reader.close()
    return out


def test_vector_files_are_current() -> None:
    assert gen_vectors.OUT.read_text() == gen_vectors.render(), (
        "run python -m rasp.protocol.gen_vectors"
    )
    assert gen_schema.OUT.read_text() == gen_schema.render(), "run make protocol-schema"


def test_vectors_use_known_error_codes() -> None:
    assert tuple(VECTORS["error_codes"]) == ERROR_CODES
    assert {c["error"] for c in VECTORS["invalid"]} == set(ERROR_CODES)
    assert VECTORS["max_frame"] == DEFAULT_MAX_FRAME


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
def test_valid_vector_decodes_and_round_trips(case: dict) -> None:
    decode, union = DECODERS[case["direction"]]
    (msg,) = _decode_stream(case["direction"], bytes.fromhex(case["frame_hex"]))
    # the same message built from the vector's object form, by a different msgspec path
    assert msg == msgspec.convert(case["message"], union)
    # (equality with convert() proves every field the vector names decoded to its value)
    # and it survives our encoder
    assert decode(encode(msg)[4:]) == msg


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_vector_is_refused_with_its_code(case: dict) -> None:
    with pytest.raises(ProtocolError) as err:
        _decode_stream(case["direction"], bytes.fromhex(case["frame_hex"]))
    assert err.value.code == case["error"], err.value.reason
    assert err.value.reason


def test_frames_split_across_reads_and_batched_in_one_read() -> None:
    frames = b"".join(
        encode(
            Trace(pid=7, runtime="python", data=TraceData(hook="open", kind="file", args=[str(i)]))
        )
        for i in range(50)
    )
    reader = FrameReader()
    got = []
    for i in range(0, len(frames), 7):  # 7-byte reads cut through prefixes and bodies
        got += [decode_to_agent(p) for p in reader.feed(frames[i : i + 7])]
    reader.close()
    assert [m.data.args[0] for m in got] == [str(i) for i in range(50)]
    assert _decode_stream("to_agent", frames)[-1].data.args == ["49"]


def test_frame_exactly_at_limit_is_accepted_one_byte_more_is_not() -> None:
    payload = b'{"message_type":1,"pid":3,"runtime":"php","data":{}}'
    pad = 128 - len(payload)
    exact = payload[:-1] + b" " * pad + b"}"
    assert len(exact) == 128
    assert _decode_stream("to_agent", frame(exact), max_frame=128)[0].pid == 3
    with pytest.raises(ProtocolError) as err:
        _decode_stream("to_agent", frame(exact + b" "), max_frame=128)
    assert err.value.code == "too_large"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        _decode_stream("to_agent", data, max_frame=4096)
    except ProtocolError as e:
        assert e.code in ERROR_CODES


@given(st.binary(min_size=0, max_size=200))
def test_arbitrary_payloads_give_a_known_code(payload: bytes) -> None:
    try:
        decode_to_agent(payload)
    except ProtocolError as e:
        assert e.code in ERROR_CODES
