"""The agent's per-run parameter cache: what may be reused, by whom, and how its memory stays bounded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from agent.tasks.parameter_cache import ParameterCache, RunKey, retained_bytes
from agent.tasks.shared_memory import SharedRegion
from agent.tasks.tensors import TensorDecl, to_wire

CALLER = "spiffe://pharma.example/coordinator/eu-1"
DIGEST = "sha256:" + "a" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tensor(name: str, values: np.ndarray, *, hashed: bool = True) -> tuple[TensorDecl, np.ndarray]:
    wire = to_wire(values, str(values.dtype))
    digest = hashlib.sha256(wire).digest() if hashed else b""
    return TensorDecl(name, str(values.dtype), tuple(values.shape), digest), values


def parameters(scale: float = 1.0, size: int = 4) -> list[tuple[TensorDecl, np.ndarray]]:
    return [
        tensor("w", np.arange(size, dtype=np.float32) * scale),
        tensor("b", np.array(scale, dtype=np.float32)),
    ]


def store(cache: ParameterCache, key: RunKey | None, entries: list[tuple[TensorDecl, np.ndarray]]) -> None:
    cache.store(key, [d for d, _ in entries], {d.name: a for d, a in entries})


def decls(entries: list[tuple[TensorDecl, np.ndarray]]) -> list[TensorDecl]:
    return [d for d, _ in entries]


def cache(capacity: int = 1 << 20, idle: float = 600.0, clock: Clock | None = None) -> ParameterCache:
    return ParameterCache(capacity, idle, clock=clock or Clock(), sweep_in_background=False)


def test_same_run_reuses_tensors_whose_header_and_digest_match() -> None:
    held = cache()
    key = RunKey.of(CALLER, "run-1", DIGEST)
    first = parameters()
    store(held, key, first)
    hits = held.lookup(key, decls(first))
    assert set(hits) == {0, 1}
    np.testing.assert_array_equal(hits[0], first[0][1])
    assert not hits[0].flags.writeable  # shared between tasks: nobody may change it

    changed_w = [tensor("w", np.arange(4, dtype=np.float32) + 1), first[1]]
    assert set(held.lookup(key, decls(changed_w))) == {1}
    other_shape = [tensor("w", np.arange(5, dtype=np.float32)), first[1]]
    assert set(held.lookup(key, decls(other_shape))) == {1}
    other_dtype = [tensor("w", np.arange(4, dtype=np.float64)), first[1]]
    assert set(held.lookup(key, decls(other_dtype))) == {1}


def test_another_digest_run_or_caller_cannot_use_the_entry() -> None:
    held = cache()
    entries = parameters()
    store(held, RunKey.of(CALLER, "run-1", DIGEST), entries)
    assert held.lookup(RunKey.of(CALLER, "run-1", "sha256:" + "b" * 64), decls(entries)) == {}
    assert held.lookup(RunKey.of(CALLER, "run-2", DIGEST), decls(entries)) == {}
    assert held.lookup(RunKey.of("cn-only-coordinator", "run-1", DIGEST), decls(entries)) == {}


def test_nothing_is_kept_for_an_empty_run_id() -> None:
    held = cache()
    assert RunKey.of(CALLER, "", DIGEST) is None
    store(held, RunKey.of(CALLER, "", DIGEST), parameters())
    assert held.runs() == [] and held.held_bytes == 0


def test_a_tensor_without_sha256_is_never_cached_or_matched() -> None:
    held = cache()
    key = RunKey.of(CALLER, "run-1", DIGEST)
    unhashed = [tensor("w", np.arange(4, dtype=np.float32), hashed=False), tensor("b", np.array(1, np.float32))]
    store(held, key, unhashed)
    assert set(held.lookup(key, decls(unhashed))) == {1}
    # Declared without sha256 now, though the bytes were verified before: still sent again.
    hashed = parameters()
    store(held, key, hashed)
    without = [tensor("w", np.arange(4, dtype=np.float32), hashed=False), hashed[1]]
    assert set(held.lookup(key, decls(without))) == {1}


def test_least_recently_used_runs_are_evicted_beyond_the_capacity() -> None:
    one_run = retained_bytes(a for _, a in parameters(size=1000))
    held = cache(capacity=2 * one_run + 10)
    keys = [RunKey.of(CALLER, f"run-{i}", DIGEST) for i in range(3)]
    store(held, keys[0], parameters(size=1000))
    store(held, keys[1], parameters(size=1000))
    held.lookup(keys[0], decls(parameters(size=1000)))  # run-0 is now the most recently used
    store(held, keys[2], parameters(size=1000))
    assert held.runs() == [keys[0], keys[2]]
    assert held.held_bytes <= held.capacity_bytes
    assert held.lookup(keys[1], decls(parameters(size=1000))) == {}


def test_a_run_larger_than_the_capacity_is_not_kept_and_zero_disables() -> None:
    held = cache(capacity=100)
    key = RunKey.of(CALLER, "run-1", DIGEST)
    store(held, key, parameters(size=1000))
    assert held.runs() == []
    disabled = cache(capacity=0)
    store(disabled, key, parameters())
    assert disabled.runs() == []


def test_idle_runs_are_dropped() -> None:
    clock = Clock()
    held = cache(idle=60.0, clock=clock)
    old, fresh = RunKey.of(CALLER, "old", DIGEST), RunKey.of(CALLER, "fresh", DIGEST)
    store(held, old, parameters())
    clock.now += 50
    store(held, fresh, parameters())
    clock.now += 20
    held.sweep()
    assert held.runs() == [fresh]
    clock.now += 61
    assert held.lookup(fresh, decls(parameters())) == {}  # expired at lookup as well
    assert held.runs() == []


def test_views_of_one_region_count_the_whole_region() -> None:
    region = SharedRegion(1 << 16)
    w = region.array(0, "float32", (4,))
    b = region.array(64, "float32", ())
    assert retained_bytes([w, b]) == 1 << 16
    separate = [np.zeros(4, np.float32), np.zeros((), np.float32)]
    assert retained_bytes(separate) == 20
    held = cache(capacity=1 << 15)
    entries = [tensor("w", w), tensor("b", b)]
    store(held, RunKey.of(CALLER, "run-1", DIGEST), entries)
    assert held.runs() == []  # 64 KiB kept alive by 20 bytes of tensors: over the capacity


@pytest.mark.parametrize(("capacity", "idle"), [(-1, 10.0), (10, 0.0)])
def test_bad_limits_are_refused(capacity: int, idle: float) -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        ParameterCache(capacity, idle)
