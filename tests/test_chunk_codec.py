"""The hand-written chunk codec agrees with protobuf's generated classes, byte for byte and on any input."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.api.chunk_codec import (
    ChunkView,
    decode_event,
    decode_request,
    encode_parameter_chunk,
    encode_result_chunk,
    serialize,
)
from agent.api.edge_agent.v1 import agent_pb2 as pb

indexes = st.integers(0, 2**32 - 1)
offsets = st.integers(0, 2**63 - 1)
payloads = st.binary(max_size=300)


@given(indexes, offsets, payloads)
def test_encoding_is_protobufs(index: int, offset: int, data: bytes) -> None:
    chunk = pb.TensorChunk(tensor_index=index, offset=offset, data=data)
    assert encode_parameter_chunk(index, offset, memoryview(data)) == pb.RunTaskRequest(
        parameter_chunk=chunk
    ).SerializeToString()
    assert encode_result_chunk(index, offset, data) == pb.TaskEvent(result_chunk=chunk).SerializeToString()


@given(indexes, offsets, payloads)
def test_decoding_round_trips_without_copying(index: int, offset: int, data: bytes) -> None:
    encoded = encode_parameter_chunk(index, offset, data)
    view = decode_request(encoded)
    assert isinstance(view, ChunkView)
    assert (view.tensor_index, view.offset, bytes(view.data)) == (index, offset, data)
    if data:
        assert view.data.obj is encoded  # a view of the received message, not a copy
    event = decode_event(encode_result_chunk(index, offset, data))
    assert isinstance(event, ChunkView) and bytes(event.data) == data


def _protobuf_request(buffer: bytes) -> object:
    try:
        message = pb.RunTaskRequest.FromString(buffer)
    except DecodeError:
        return DecodeError
    if message.WhichOneof("part") == "parameter_chunk":
        chunk = message.parameter_chunk
        return ("chunk", chunk.tensor_index, chunk.offset, chunk.data)
    return ("message", message.SerializeToString())


def _ours_request(buffer: bytes) -> object:
    try:
        decoded = decode_request(buffer)
    except DecodeError:
        return DecodeError
    if isinstance(decoded, ChunkView):
        return ("chunk", decoded.tensor_index, decoded.offset, bytes(decoded.data))
    return ("message", decoded.SerializeToString())


def _mutations() -> st.SearchStrategy[bytes]:
    """Valid chunks with bytes changed, cut or added: the inputs a fast path could get wrong."""
    base = st.builds(encode_parameter_chunk, indexes, offsets, st.binary(max_size=40))
    return st.one_of(
        st.binary(max_size=80),
        base,
        st.tuples(base, st.integers(0, 200), st.integers(0, 255)).map(
            lambda t: t[0][: t[1] % max(1, len(t[0]))] + bytes([t[2]]) + t[0][t[1] % max(1, len(t[0])) + 1 :]
        ),
        st.tuples(base, st.integers(0, 200)).map(lambda t: t[0][: t[1]]),
        st.tuples(base, st.binary(max_size=12)).map(lambda t: t[0] + t[1]),
    )


@settings(max_examples=500)
@given(_mutations())
def test_any_input_decodes_as_protobuf_would(buffer: bytes) -> None:
    assert _ours_request(buffer) == _protobuf_request(buffer)


@settings(max_examples=300)
@given(_mutations())
def test_any_event_decodes_as_protobuf_would(buffer: bytes) -> None:
    event_buffer = b"\x22" + buffer[1:] if buffer else buffer
    try:
        expected: object = pb.TaskEvent.FromString(event_buffer)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode_event(event_buffer)
        return
    decoded = decode_event(event_buffer)
    assert isinstance(expected, pb.TaskEvent)
    if expected.WhichOneof("event") == "result_chunk":
        chunk = expected.result_chunk
        assert isinstance(decoded, ChunkView)
        assert (decoded.tensor_index, decoded.offset, bytes(decoded.data)) == (chunk.tensor_index, chunk.offset,
                                                                               chunk.data)
    else:
        assert decoded == expected


def test_other_messages_stay_protobuf_messages() -> None:
    spec = pb.RunTaskRequest(spec=pb.TaskSpec(dataset_id="cohort", run_id="r", round=3))
    decoded = decode_request(spec.SerializeToString())
    assert decoded == spec
    accepted = pb.TaskEvent(accepted=pb.TaskAccepted(task_id="t", parameters_needed=[0, 2]))
    assert decode_event(accepted.SerializeToString()) == accepted
    assert serialize(accepted) == accepted.SerializeToString() and serialize(b"raw") == b"raw"
