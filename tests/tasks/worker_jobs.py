"""Computations for the worker tests; module-level so that the forkserver can import them."""

from __future__ import annotations

import os
import pickle
import time
from typing import Any

import numpy as np

from agent.tasks.worker import Progress, Released, TaskInputError


def add(job: tuple[int, int], progress: Progress) -> Released:
    progress(0.5, "adding")
    return Released({"sum": np.array([job[0] + job[1]], np.float64)}, {"count": 2.0})


def allocate(megabytes: int, progress: Progress) -> Released:
    block = bytearray(megabytes * 1024 * 1024)
    return Released({}, {"bytes": float(len(block))})


def spin(seconds: float, progress: Progress) -> Released:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return Released({}, {})


def sleep(seconds: float, progress: Progress) -> Released:
    progress(0.0, "sleeping")
    time.sleep(seconds)
    return Released({}, {})


def refuse(message: str, progress: Progress) -> Released:
    raise TaskInputError(message)


def explode(path: str, progress: Progress) -> Released:
    raise RuntimeError(f"cannot open {path}")


def die(_: None, progress: Progress) -> Released:
    os._exit(3)


def pid(_: None, progress: Progress) -> Released:
    return Released({}, {"pid": float(os.getpid())})


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/edge-agent-pwned",))


def hostile_pickle(marker: str, progress: Progress) -> Released:
    """A worker taken over by a hostile graph writes a pickle where the daemon expects JSON."""
    import inspect

    sender = inspect.currentframe().f_back.f_locals["sender"]  # type: ignore[union-attr]
    sender.send(_Payload())
    sender.send_bytes(pickle.dumps(_Payload()))
    os._exit(0)


def hostile_result(kind: str, progress: Progress) -> Released:
    """Results that do not match what they announce."""
    import inspect
    import json

    sender = inspect.currentframe().f_back.f_locals["sender"]  # type: ignore[union-attr]
    headers = {
        "object_dtype": {"tag": "result", "tensors": [{"name": "w", "dtype": "object", "shape": [1]}], "scalars": {}},
        "short": {"tag": "result", "tensors": [{"name": "w", "dtype": "float64", "shape": [1000]}], "scalars": {}},
        "scalar_string": {"tag": "result", "tensors": [], "scalars": {"x": "1e9"}},
    }
    sender.send_bytes(json.dumps(headers[kind]).encode())
    sender.send_bytes(b"\0" * 8)
    os._exit(0)
