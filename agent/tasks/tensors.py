"""Tensors on the wire: raw little-endian bytes, described by dtype and shape, sent in chunks.

Incoming tensors are written straight into preallocated arrays (no per-element
decoding, no concatenation of chunks); every byte count, offset and digest is
checked, so a coordinator cannot make the agent allocate more than the declared
parameters need or read past an array.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.tasks.shared_memory import SharedRegion, layout

DTYPES: Mapping[str, np.dtype[np.generic]] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
}

# Bounded chunks both ways: no message comes near gRPC's message-size limits.
MAX_CHUNK_BYTES = 1024 * 1024


class TensorError(ValueError):
    """A tensor on the wire does not match its declaration; the message names the tensor."""


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dtype: str
    shape: tuple[int, ...]
    # sha256 of the raw bytes, if the sender gave it (checked when the tensor is complete).
    sha256: bytes = b""

    @property
    def byte_length(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


class TensorAssembler:
    """Receives chunks of several tensors, in order, into preallocated arrays.

    With ``shared=True`` the arrays live in one memfd-backed region, so that a task
    worker can map them without a copy (agent.tasks.shared_memory).
    """

    def __init__(self, declared: Sequence[TensorDecl], *, shared: bool = False) -> None:
        self._declared = tuple(declared)
        self._shared = shared
        self._filled = [0] * len(self._declared)
        self._wanted: set[int] = set(range(len(self._declared)))
        self._allocated: dict[int, npt.NDArray[np.uint8]] | None = None
        # Shared mode: the region and each tensor's offset in it, for writes through its descriptor.
        self._region: tuple[SharedRegion, dict[int, int]] | None = None
        # Hashed as the chunks arrive (in order), while they are in the CPU's cache.
        self._hashes = {i: hashlib.sha256() for i, decl in enumerate(self._declared) if decl.sha256}

    def expect_only(self, indexes: set[int]) -> None:
        """Tensors outside ``indexes`` will not be sent (the agent already holds them)."""
        if self._allocated is not None:
            raise RuntimeError("expect_only must come before the first chunk")
        self._wanted = set(indexes)

    @property
    def _buffers(self) -> dict[int, npt.NDArray[np.uint8]]:
        # Allocated on first use, for the wanted tensors only.
        if self._allocated is None:
            wanted = sorted(self._wanted)
            if self._shared:
                slots, size = layout([(str(i), "u1", (self._declared[i].byte_length,)) for i in wanted])
                region = SharedRegion(size)
                self._region = (region, {i: slot.offset for i, slot in zip(wanted, slots, strict=True)})
                self._allocated = {
                    i: region.array(slot.offset, "u1", slot.shape) for i, slot in zip(wanted, slots, strict=True)
                }
            else:
                self._allocated = {i: np.empty(self._declared[i].byte_length, dtype=np.uint8) for i in wanted}
        return self._allocated

    def write(self, index: int, offset: int, data: bytes | memoryview) -> None:
        if index not in self._wanted:
            raise TensorError(f"tensor_index {index} is not one of the tensors the agent asked for")
        declared = self._declared[index]
        if offset != self._filled[index]:
            raise TensorError(
                f"tensor {declared.name!r}: chunk at offset {offset}, expected {self._filled[index]} (chunks in order)"
            )
        if len(data) > MAX_CHUNK_BYTES:
            raise TensorError(f"tensor {declared.name!r}: chunk of {len(data)} bytes exceeds {MAX_CHUNK_BYTES}")
        end = offset + len(data)
        if end > declared.byte_length:
            raise TensorError(f"tensor {declared.name!r}: more than the declared {declared.byte_length} bytes")
        buffers = self._buffers  # allocated on the first chunk
        if self._region is not None:
            # Through the descriptor: the kernel fills the pages, where writing through the
            # mapping would fault them in one at a time (twice the cost).
            region, start = self._region
            region.write(start[index] + offset, data)
        else:
            buffers[index][offset:end] = np.frombuffer(data, dtype=np.uint8)
        if index in self._hashes:
            self._hashes[index].update(data)
        self._filled[index] = end

    def finish(self) -> dict[str, npt.NDArray[np.generic]]:
        arrays: dict[str, npt.NDArray[np.generic]] = {}
        for index in sorted(self._wanted):
            declared = self._declared[index]
            if self._filled[index] != declared.byte_length:
                raise TensorError(
                    f"tensor {declared.name!r}: received {self._filled[index]} of {declared.byte_length} bytes"
                )
            raw = self._buffers[index]
            if index in self._hashes and self._hashes[index].digest() != declared.sha256:
                raise TensorError(f"tensor {declared.name!r}: bytes do not match the declared sha256")
            arrays[declared.name] = raw.view(DTYPES[declared.dtype]).reshape(declared.shape)
        return arrays


def to_wire(array: npt.NDArray[np.generic], dtype: str) -> memoryview:
    """The raw little-endian bytes of ``array`` as ``dtype``, without a copy when it already is."""
    converted = np.ascontiguousarray(array, dtype=DTYPES[dtype])
    return converted.reshape(-1).view(np.uint8).data


def chunk_views(data: memoryview, chunk_bytes: int = MAX_CHUNK_BYTES) -> Iterator[tuple[int, memoryview]]:
    """(offset, view) pieces of at most ``chunk_bytes``, without copies; at least one, so
    empty tensors are announced."""
    if len(data) == 0:
        yield 0, data
        return
    for offset in range(0, len(data), chunk_bytes):
        yield offset, data[offset : offset + chunk_bytes]
