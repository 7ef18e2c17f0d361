"""Tensors in memfd-backed shared memory, handed between the daemon and a worker by file descriptor.

Large parameters and results must not be copied through pipes or pickles: a
25M-parameter model is 100 MB each way per task. The daemon receives parameter
chunks straight into a :class:`SharedRegion`, and the worker maps the same pages
read-only; the worker writes its result into a region of its own, seals it, and
the daemon maps that.

The worker is not trusted with the daemon's memory, so:
* the daemon hands out a read-only descriptor of its region (reopened through
  /proc), and seals the region against resizing: the worker can neither change
  the parameters the daemon keeps nor truncate them under it (a truncated
  mapping would kill the daemon with SIGBUS when read);
* the daemon maps a worker's result only if it is sealed against writing and
  resizing and has exactly the announced size.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Tensors start on 64-byte boundaries (cache lines; what SIMD loads like).
ALIGNMENT = 64

_RESIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_FROZEN_SEALS = _RESIZE_SEALS | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class SharedMemoryError(Exception):
    """A region handed over by the other side is not what it was announced to be."""


class _RegionMap(mmap.mmap):
    """An mmap that knows its memfd, so an array viewing it can be handed over without a copy."""

    fd: int


def _aligned(size: int) -> int:
    return (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lies: region index, byte offset, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    region: int
    offset: int

    @property
    def byte_length(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class SharedRegion:
    """A writable memfd-backed region in this process."""

    def __init__(self, size: int, name: str = "edge-agent-tensors") -> None:
        # mmap cannot map zero bytes; an empty region still gets one alignment unit.
        self.size = max(ALIGNMENT, size)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, self.size)
            self._map = _RegionMap(fd, self.size)
        except BaseException:
            os.close(fd)
            raise
        self._map.fd = fd
        # The descriptor lives as long as any array viewing the mapping.
        weakref.finalize(self._map, os.close, fd)

    @property
    def fd(self) -> int:
        return self._map.fd

    def array(self, offset: int, dtype: str | np.dtype[Any], shape: Sequence[int]) -> npt.NDArray[Any]:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=offset).reshape(tuple(shape))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copies ``data`` in at ``offset`` through the descriptor (no page faults in this process)."""
        view = memoryview(data).cast("B")
        if offset < 0 or offset + view.nbytes > self.size:
            raise ValueError(f"{view.nbytes} bytes at offset {offset} do not fit a region of {self.size}")
        _write_fully(self.fd, view, offset)


def layout(entries: Sequence[tuple[str, str, tuple[int, ...]]]) -> tuple[list[TensorSlot], int]:
    """Slots for tensors packed into one region (region index 0), and the region's size."""
    slots = []
    offset = 0
    for name, dtype, shape in entries:
        slot = TensorSlot(name, dtype, tuple(shape), 0, offset)
        slots.append(slot)
        offset += _aligned(slot.byte_length)
    return slots, offset


def owner(array: npt.NDArray[Any]) -> object:
    """The object at the root of an array's chain of bases and views: what holding it keeps alive."""
    base: object = array
    while True:
        parent = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
        if parent is None:
            return base
        base = parent


def location(array: npt.NDArray[Any]) -> tuple[_RegionMap, int] | None:
    """The region and byte offset of a C-contiguous array that views a SharedRegion, else None."""
    if not array.flags.c_contiguous:
        return None
    base = owner(array)
    if not isinstance(base, _RegionMap):
        return None
    start = np.frombuffer(base, dtype=np.uint8, count=0).ctypes.data if len(base) else 0
    return base, array.ctypes.data - start


@dataclass
class Shipment:
    """Tensors ready to be handed to a worker: slots, one read-only descriptor per region.

    The descriptors are the shipment's own (reopened or duplicated), so a region copied
    into for the shipment lives on through them alone.
    """

    slots: list[TensorSlot]
    fds: list[int]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def ship(tensors: Mapping[str, npt.NDArray[Any]]) -> Shipment:
    """Describes ``tensors`` by region and offset; arrays not in shared memory are copied into one."""
    placed: list[tuple[str, npt.NDArray[Any], _RegionMap, int]] = []
    unshared: list[tuple[str, npt.NDArray[Any]]] = []
    for name, array in tensors.items():
        found = location(array)
        if found is None:
            unshared.append((name, array))
        else:
            placed.append((name, array, *found))
    if unshared:
        copy_slots, size = layout([(name, array.dtype.str, tuple(array.shape)) for name, array in unshared])
        region = SharedRegion(size)
        for slot, (name, array) in zip(copy_slots, unshared, strict=True):
            region.array(slot.offset, array.dtype, array.shape)[...] = array
            placed.append((name, array, region._map, slot.offset))
    slots: list[TensorSlot] = []
    fds: list[int] = []
    index_of: dict[int, int] = {}  # id of a region's mapping -> its descriptor's index
    try:
        for name, array, mapped, offset in placed:
            if id(mapped) not in index_of:
                index_of[id(mapped)] = len(fds)
                fds.append(_read_only_descriptor(mapped.fd))
            slots.append(TensorSlot(name, array.dtype.str, tuple(array.shape), index_of[id(mapped)], offset))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Shipment(slots, fds)


def _read_only_descriptor(fd: int) -> int:
    """A read-only descriptor of the same memfd (the worker must not write the daemon's pages)."""
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _RESIZE_SEALS)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        # Without /proc the worker gets the writable descriptor; the size seal still holds
        # where sealing is possible.
        return os.dup(fd)


def map_shipped(slots: Sequence[TensorSlot], fds: Sequence[int]) -> dict[str, npt.NDArray[Any]]:
    """Worker side: read-only arrays over the daemon's regions (the descriptors are closed)."""
    maps = []
    try:
        for fd in fds:
            size = os.fstat(fd).st_size
            maps.append(mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None)
    finally:
        for fd in fds:
            os.close(fd)
    arrays: dict[str, npt.NDArray[Any]] = {}
    for slot in slots:
        mapped = maps[slot.region]
        count = int(np.prod(slot.shape, dtype=np.int64))
        data = np.frombuffer(mapped, dtype=np.dtype(slot.dtype), count=count, offset=slot.offset) if mapped else (
            np.empty(0, dtype=np.dtype(slot.dtype))
        )
        arrays[slot.name] = data.reshape(slot.shape)
    return arrays


def frozen_region(arrays: Sequence[npt.NDArray[Any]]) -> tuple[int, int]:
    """Worker side: one sealed memfd holding ``arrays`` packed by :func:`layout`; (fd, size)."""
    slots, size = layout([(str(i), a.dtype.str, tuple(a.shape)) for i, a in enumerate(arrays)])
    size = max(ALIGNMENT, size)
    fd = os.memfd_create("edge-agent-result", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        for slot, array in zip(slots, arrays, strict=True):
            # Written, not mapped: the kernel copies into the file's pages, where faulting
            # in a fresh mapping page by page costs twice as much. F_SEAL_WRITE also needs
            # no writable mapping to exist.
            _write_fully(fd, np.ascontiguousarray(array).reshape(-1).view(np.uint8).data, slot.offset)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _FROZEN_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def _write_fully(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        if written <= 0:
            raise OSError(f"writing a shared region stopped at offset {offset}")
        data = data[written:]
        offset += written


def map_frozen(fd: int, size: int) -> mmap.mmap:
    """Daemon side: maps a worker's result region, only if sealed and of the announced size.

    Takes ownership of ``fd``. Raises SharedMemoryError for anything else.
    """
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != max(ALIGNMENT, size):
            raise SharedMemoryError(f"result region of {info.st_size} bytes, announced {size}")
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as exc:
            raise SharedMemoryError(f"result region is not a sealable memfd: {exc}") from None
        if seals & _FROZEN_SEALS != _FROZEN_SEALS:
            raise SharedMemoryError(f"result region is not sealed (seals {seals:#x})")
        return mmap.mmap(fd, info.st_size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
