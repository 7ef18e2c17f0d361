"""Parameters the agent already holds for a run, so that a coordinator need not send them again.

A federated run sends a site the same parameters more than once: the model a
round produced goes to that round's evaluation and to the next round's
training, and layers that do not change (frozen ones) go out every round. For
a large model that is most of a round's traffic. The agent therefore keeps
the last parameters it received for each run and asks
(``TaskAccepted.parameters_needed``) only for tensors whose header differs.

What may be reused is narrow on purpose:
* only tensors whose received bytes were checked against a sha256 the
  coordinator declared: a hit then means the coordinator declared exactly the
  bytes the agent holds, not merely the same name and shape;
* per (caller identity, run id, package digest): one coordinator can neither
  use nor probe another's parameters, and nothing is kept for an empty run id.

Memory is bounded: runs are evicted least recently used first once the total
exceeds the capacity, and a run idle for ``idle_seconds`` is dropped.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.tasks.shared_memory import owner
from agent.tasks.tensors import TensorDecl

Array = npt.NDArray[np.generic]


@dataclass(frozen=True)
class RunKey:
    caller: str
    run_id: str
    package_digest: str

    @classmethod
    def of(cls, caller: str, run_id: str, package_digest: str) -> RunKey | None:
        """None when the task names no run: its parameters are not kept."""
        if not run_id or not caller:
            return None
        return cls(caller, run_id, package_digest)


@dataclass(frozen=True)
class CacheStats:
    """Parameter tensors found held (hits) or sent again (misses) since start, and bytes held now."""

    hits: int
    misses: int
    hit_bytes: int
    held_bytes: int


@dataclass
class _Counts:
    hits: int = 0
    misses: int = 0
    hit_bytes: int = 0


@dataclass
class _Run:
    tensors: dict[str, tuple[TensorDecl, Array]]
    retained_bytes: int
    last_used: float


def retained_bytes(arrays: Iterable[Array]) -> int:
    """Bytes that holding ``arrays`` keeps alive.

    An array may view part of a larger buffer (received tensors can share one
    memory region per upload); holding it keeps the whole buffer, so that is
    what counts.
    """
    owners: dict[int, int] = {}
    for array in arrays:
        owner, size = _owner(array)
        owners[id(owner)] = size
    return sum(owners.values())


def _owner(array: Array) -> tuple[object, int]:
    base = owner(array)
    if isinstance(base, np.ndarray):
        return base, int(base.nbytes)
    try:
        with memoryview(base) as view:  # type: ignore[arg-type]  # mmap, bytes: anything with a buffer
            return base, int(view.nbytes)
    except TypeError:
        return array, int(array.nbytes)


def _read_only(array: Array) -> Array:
    view = array.view()
    view.flags.writeable = False
    return view


class ParameterCache:
    """The last verified parameters of each run, bounded in bytes and in idle time. Thread-safe."""

    def __init__(
        self,
        capacity_bytes: int,
        idle_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sweep_in_background: bool = True,
    ) -> None:
        if capacity_bytes < 0 or idle_seconds <= 0:
            raise ValueError("capacity_bytes must be >= 0 and idle_seconds > 0")
        self.capacity_bytes = capacity_bytes
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._runs: OrderedDict[RunKey, _Run] = OrderedDict()
        self._counts = _Counts()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._sweep_in_background = sweep_in_background

    # ------------------------------------------------------------ queries

    @property
    def held_bytes(self) -> int:
        return self.stats().held_bytes

    def runs(self) -> list[RunKey]:
        """Least recently used first."""
        with self._lock:
            return list(self._runs)

    # ------------------------------------------------------------ use

    def lookup(self, key: RunKey | None, declared: Sequence[TensorDecl]) -> dict[int, Array]:
        """Indexes into ``declared`` this run already holds, with their (read-only) arrays.

        A tensor matches only if name, dtype, shape and the declared sha256 all
        equal what was received; a declaration without sha256 never matches.
        """
        now = self._clock()
        with self._lock:
            hits = self._held(key, declared, now)
            self._counts.hits += len(hits)
            self._counts.misses += len(declared) - len(hits)
            self._counts.hit_bytes += sum(declared[index].byte_length for index in hits)
        return hits

    def stats(self) -> CacheStats:
        """Counts since start and what is held now, for the metrics endpoint."""
        with self._lock:
            held = sum(run.retained_bytes for run in self._runs.values())
            return CacheStats(self._counts.hits, self._counts.misses, self._counts.hit_bytes, held)

    def _held(self, key: RunKey | None, declared: Sequence[TensorDecl], now: float) -> dict[int, Array]:
        if key is None:
            return {}
        run = self._runs.get(key)
        if run is None:
            return {}
        if now - run.last_used > self.idle_seconds:
            del self._runs[key]
            return {}
        run.last_used = now
        self._runs.move_to_end(key)
        hits: dict[int, Array] = {}
        for index, decl in enumerate(declared):
            held = run.tensors.get(decl.name)
            if decl.sha256 and held is not None and held[0] == decl:
                hits[index] = held[1]
        return hits

    def store(self, key: RunKey | None, declared: Sequence[TensorDecl], arrays: Mapping[str, Array]) -> None:
        """Remembers the run's parameters, replacing what it held before.

        Only declarations with a sha256 are kept: the caller stores only arrays
        whose bytes were checked against it (or that came from this cache).
        """
        if key is None or self.capacity_bytes == 0:
            return
        tensors = {
            decl.name: (decl, _read_only(arrays[decl.name])) for decl in declared if decl.sha256 and decl.name in arrays
        }
        size = retained_bytes(array for _, array in tensors.values())
        with self._lock:
            self._runs.pop(key, None)
            if not tensors or size > self.capacity_bytes:
                return
            self._runs[key] = _Run(tensors, size, self._clock())
            total = sum(run.retained_bytes for run in self._runs.values())
            while total > self.capacity_bytes:
                _, evicted = self._runs.popitem(last=False)
                total -= evicted.retained_bytes
        self._start_sweeper()

    def sweep(self) -> None:
        """Drops runs idle for longer than ``idle_seconds``."""
        now = self._clock()
        with self._lock:
            for key in [k for k, run in self._runs.items() if now - run.last_used > self.idle_seconds]:
                del self._runs[key]

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._runs.clear()

    def _start_sweeper(self) -> None:
        # An agent that goes quiet must still give the memory back: a lookup alone
        # would drop an idle run only when the next task comes.
        if not self._sweep_in_background:
            return
        with self._lock:
            if self._sweeper is not None or self._closed.is_set():
                return
            self._sweeper = threading.Thread(target=self._sweep_periodically, name="parameter-cache", daemon=True)
        self._sweeper.start()

    def _sweep_periodically(self) -> None:
        period = min(60.0, self.idle_seconds / 2)
        while not self._closed.wait(timeout=period):
            self.sweep()
