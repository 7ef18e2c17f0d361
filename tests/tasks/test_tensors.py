"""Tensor transfer: chunked raw bytes into preallocated arrays, every declaration enforced."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.tasks.tensors import MAX_CHUNK_BYTES, TensorAssembler, TensorDecl, TensorError, chunk_views, to_wire

DTYPE_NAMES = ["float32", "float64", "int32", "int64"]


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(DTYPE_NAMES),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9),
    chunk=st.integers(1, 64),
    shared=st.booleans(),
    data=st.data(),
)
def test_round_trip_any_shape_and_chunk_size(
    dtype: str, shape: tuple[int, ...], chunk: int, shared: bool, data: st.DataObject
) -> None:
    array = data.draw(hnp.arrays(np.dtype(dtype), shape))
    wire = to_wire(array, dtype)
    declared = TensorDecl("w", dtype, tuple(shape), hashlib.sha256(wire).digest())
    # shared: written through the memfd's descriptor, read back through its mapping.
    assembler = TensorAssembler([declared], shared=shared)
    for offset, piece in chunk_views(wire, chunk):
        assembler.write(0, offset, piece)
    received = assembler.finish()["w"]
    assert received.shape == tuple(shape) and received.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(received, array)


def test_every_violation_names_the_tensor() -> None:
    declared = [TensorDecl("w", "float32", (4,)), TensorDecl("b", "float32", ())]
    wire = bytes(to_wire(np.arange(4, dtype=np.float32), "float32"))

    out_of_order = TensorAssembler(declared)
    with pytest.raises(TensorError, match="'w': chunk at offset 4, expected 0"):
        out_of_order.write(0, 4, wire[4:])

    too_long = TensorAssembler(declared)
    with pytest.raises(TensorError, match="'w': more than the declared 16 bytes"):
        too_long.write(0, 0, wire + b"\0")

    missing = TensorAssembler(declared)
    missing.write(0, 0, wire[:8])
    with pytest.raises(TensorError, match="'w': received 8 of 16 bytes"):
        missing.finish()

    unknown = TensorAssembler(declared)
    with pytest.raises(TensorError, match="tensor_index 7"):
        unknown.write(7, 0, b"")

    for shared in (False, True):
        digest = TensorAssembler([TensorDecl("w", "float32", (4,), hashlib.sha256(b"other").digest())], shared=shared)
        digest.write(0, 0, wire)
        with pytest.raises(TensorError, match="'w': bytes do not match the declared sha256"):
            digest.finish()

    huge = TensorAssembler([TensorDecl("big", "float32", (MAX_CHUNK_BYTES,))])
    with pytest.raises(TensorError, match="exceeds"):
        huge.write(0, 0, b"\0" * (MAX_CHUNK_BYTES + 1))


def test_only_requested_tensors_are_expected() -> None:
    declared = [TensorDecl("w", "float32", (2,)), TensorDecl("b", "float32", ())]
    assembler = TensorAssembler(declared)
    assembler.expect_only({1})
    with pytest.raises(TensorError, match="tensor_index 0"):
        assembler.write(0, 0, b"\0" * 8)
    assembler.write(1, 0, b"\0" * 4)
    assert list(assembler.finish()) == ["b"]


def test_empty_tensor_is_still_one_chunk() -> None:
    assert list(chunk_views(memoryview(b""))) == [(0, b"")]
