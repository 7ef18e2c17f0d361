"""Tensor chunks on the wire without the copies protobuf's Python objects make.

A RunTask stream is almost all TensorChunk messages. Through the generated
classes every chunk's bytes are copied four or five times per side (slice,
message construction, serialisation; parse, field access), which at 100 MB per
task and round costs more CPU than TLS. This module encodes and decodes just
the two chunk-carrying messages itself, in protobuf's wire format:

    RunTaskRequest.parameter_chunk (field 2) / TaskEvent.result_chunk (field 4)
        TensorChunk: tensor_index = 1 (varint), offset = 2 (varint), data = 3 (bytes)

Encoding joins a few header bytes with the tensor's memory (one copy). Decoding
returns a :class:`ChunkView` whose ``data`` is a zero-copy view of the received
message. Only the canonical form a protobuf encoder produces takes the fast
path: anything else (other fields, repeats, unusual varints, other messages) is
parsed by protobuf itself, so the semantics are protobuf's in every case. The
tests check both directions against the generated classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc

_REQUEST_CHUNK_TAG = 0x12  # field 2, length-delimited
_EVENT_CHUNK_TAG = 0x22  # field 4, length-delimited
_INDEX_TAG, _OFFSET_TAG, _DATA_TAG = 0x08, 0x10, 0x1A
_UINT32_LIMIT = 1 << 32
_INT64_LIMIT = 1 << 63


@dataclass(frozen=True)
class ChunkView:
    """A decoded TensorChunk whose ``data`` views the received message (no copy)."""

    tensor_index: int
    offset: int
    data: memoryview


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode(outer_tag: int, tensor_index: int, offset: int, data: bytes | memoryview) -> bytes:
    if not (0 <= tensor_index < _UINT32_LIMIT and 0 <= offset < _INT64_LIMIT):
        raise ValueError(f"chunk index {tensor_index} or offset {offset} out of range")
    head = bytearray()
    if tensor_index:
        head += bytes([_INDEX_TAG]) + _varint(tensor_index)
    if offset:
        head += bytes([_OFFSET_TAG]) + _varint(offset)
    length = len(data)
    if length:
        head += bytes([_DATA_TAG]) + _varint(length)
    inner = len(head) + length
    return b"".join((bytes([outer_tag]), _varint(inner), head, data))


def encode_parameter_chunk(tensor_index: int, offset: int, data: bytes | memoryview) -> bytes:
    """The serialised RunTaskRequest{parameter_chunk{...}}."""
    return _encode(_REQUEST_CHUNK_TAG, tensor_index, offset, data)


def encode_result_chunk(tensor_index: int, offset: int, data: bytes | memoryview) -> bytes:
    """The serialised TaskEvent{result_chunk{...}}."""
    return _encode(_EVENT_CHUNK_TAG, tensor_index, offset, data)


def _read_varint(buffer: bytes, position: int) -> tuple[int, int] | None:
    """(value, next position) of a canonical varint of at most 10 bytes, else None."""
    value = 0
    for shift in range(0, 70, 7):
        if position >= len(buffer):
            return None
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            # A non-canonical encoding (trailing zero groups) is left to protobuf.
            if byte == 0 and shift:
                return None
            return value, position
    return None


def _fast_chunk(buffer: bytes, outer_tag: int) -> ChunkView | None:
    """The chunk if ``buffer`` is exactly one canonically encoded chunk field, else None."""
    if not buffer or buffer[0] != outer_tag:
        return None
    length = _read_varint(buffer, 1)
    if length is None or length[1] + length[0] != len(buffer):
        return None
    position = length[1]
    index = offset = 0
    data = memoryview(b"")
    last_tag = 0
    while position < len(buffer):
        tag = buffer[position]
        # Each field at most once, in field order, with no default value written:
        # exactly what protobuf's encoder emits.
        if tag <= last_tag or tag not in (_INDEX_TAG, _OFFSET_TAG, _DATA_TAG):
            return None
        last_tag = tag
        read = _read_varint(buffer, position + 1)
        if read is None or read[0] == 0:
            return None
        value, position = read
        if tag == _INDEX_TAG:
            if value >= _UINT32_LIMIT:
                return None
            index = value
        elif tag == _OFFSET_TAG:
            if value >= _INT64_LIMIT:
                return None
            offset = value
        else:
            if position + value > len(buffer):
                return None
            data = memoryview(buffer)[position : position + value]
            position += value
    return ChunkView(index, offset, data)


def decode_request(buffer: bytes) -> pb.RunTaskRequest | ChunkView:
    """A RunTaskRequest, with a parameter chunk as a ChunkView."""
    fast = _fast_chunk(buffer, _REQUEST_CHUNK_TAG)
    if fast is not None:
        return fast
    message = pb.RunTaskRequest.FromString(buffer)
    return _view(message.parameter_chunk) if message.WhichOneof("part") == "parameter_chunk" else message


def decode_event(buffer: bytes) -> pb.TaskEvent | ChunkView:
    """A TaskEvent, with a result chunk as a ChunkView."""
    fast = _fast_chunk(buffer, _EVENT_CHUNK_TAG)
    if fast is not None:
        return fast
    message = pb.TaskEvent.FromString(buffer)
    return _view(message.result_chunk) if message.WhichOneof("event") == "result_chunk" else message


def _view(chunk: pb.TensorChunk) -> ChunkView:
    """A chunk protobuf parsed (a form the fast path leaves to it), as a ChunkView."""
    return ChunkView(chunk.tensor_index, chunk.offset, memoryview(chunk.data))


class _Registrations:
    """Stands in for a server to collect the generated code's method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers = dict(handlers)


def add_agent_service(servicer: pb_grpc.AgentServicer, server: grpc.Server) -> None:
    """The Agent service, as the generated add_AgentServicer_to_server registers it, but
    with RunTask's requests decoded and its responses serialised by this module."""
    collected = _Registrations()
    pb_grpc.add_AgentServicer_to_server(servicer, collected)  # type: ignore[arg-type]
    handlers = collected.handlers | {
        "RunTask": grpc.stream_stream_rpc_method_handler(
            servicer.RunTask, request_deserializer=decode_request, response_serializer=serialize
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def serialize(message: Any) -> bytes:
    """A message already encoded (bytes) as is, a protobuf message serialised."""
    if isinstance(message, bytes):
        return message
    serialized: bytes = message.SerializeToString()
    return serialized


SERVICE = "edge_agent.v1.Agent"
RUN_TASK_METHOD = f"/{SERVICE}/RunTask"


def run_task_callable(channel: Any) -> Callable[..., Any]:
    """RunTask on ``channel`` with these codecs: send encoded chunks or messages, receive ChunkViews."""
    return channel.stream_stream(  # type: ignore[no-any-return]
        RUN_TASK_METHOD, request_serializer=serialize, response_deserializer=decode_event, _registered_method=True
    )
