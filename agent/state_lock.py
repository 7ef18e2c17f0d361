"""One process at a time owns a state directory: an exclusive flock on `agent.lock`.

The ledger, the audit log and the package store are written on the assumption
that one daemon writes them (crash safety, the audit head, the budget
reservations). `edge-agent serve` holds this lock from before it opens
anything until it exits, and so does `edge-agent keys rotate`, which must not
run under a daemon still signing with the old key. The kernel drops the lock
when the process ends, however it ends, so there is never a stale lock; the
file itself stays and only says who took it last.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

LOCK_FILENAME = "agent.lock"


class StateDirectoryBusyError(Exception):
    """Another edge-agent process holds the state directory."""


@dataclass(frozen=True)
class Holder:
    """The process that holds the lock, as it wrote itself into the lock file."""

    pid: int | None
    command: str

    def __str__(self) -> str:
        pid = "PID unknown" if self.pid is None else f"PID {self.pid}"
        return f"`edge-agent {self.command}` ({pid})"


@dataclass(frozen=True)
class StateDirectoryLock:
    """Held until `release()` or the end of the process (the descriptor is not inherited by children)."""

    path: Path
    fd: int

    def release(self) -> None:
        os.close(self.fd)


def lock_state_directory(state_dir: Path, command: str) -> StateDirectoryLock:
    """Takes the state directory for this process, or raises StateDirectoryBusyError naming the holder."""
    path = state_dir / LOCK_FILENAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise StateDirectoryBusyError(
            f"state directory {state_dir} is in use by {holder} (lock {path}); stop that process first, "
            "or give this instance its own agent.state_dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
    return StateDirectoryLock(path, fd)


def lock_holder(state_dir: Path) -> Holder | None:
    """Who holds the state directory now; None when no process does (whatever the file says)."""
    try:
        fd = os.open(state_dir / LOCK_FILENAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> Holder:
    # The holder writes its line right after taking the lock: it may not be there yet.
    words = os.pread(fd, 200, 0).decode("ascii", errors="replace").split()
    pid = int(words[0]) if words and words[0].isdigit() else None
    return Holder(pid, " ".join(words[1:]) or "serve")
