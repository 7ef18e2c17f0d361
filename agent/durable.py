"""Writing files so that nothing half-written or world-readable is left, and what was written survives a crash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically writes `data` with `mode`, via a temp file in the same directory.

    The temp file is created 0600 from the start, so a private key is never
    readable by others, not even for a moment, and a crash leaves either the
    old file or the new one, never a truncated key.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is only durable once the directory entry is on disk.
    fsync_directory(path.parent)


def write_public(path: Path, data: bytes) -> None:
    write_private(path, data, mode=0o644)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
