"""Computations for the worker tests; module-level so that the forkserver can import them."""

from __future__ import annotations

import os
import time

from agent.tasks.worker import Progress, TaskInputError


def add(job: tuple[int, int], progress: Progress) -> int:
    progress(0.5, "adding")
    return job[0] + job[1]


def allocate(megabytes: int, progress: Progress) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    return len(block)


def spin(seconds: float, progress: Progress) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def sleep(seconds: float, progress: Progress) -> None:
    progress(0.0, "sleeping")
    time.sleep(seconds)


def refuse(message: str, progress: Progress) -> None:
    raise TaskInputError(message)


def explode(path: str, progress: Progress) -> None:
    raise RuntimeError(f"cannot open {path}")


def die(_: None, progress: Progress) -> None:
    os._exit(3)


def pid(_: None, progress: Progress) -> int:
    return os.getpid()
