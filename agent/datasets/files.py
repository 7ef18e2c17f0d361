"""Which files on disk make up a dataset.

Guessing the format, fingerprinting for the cache and opening with pyarrow all
go through ``scan_data_files`` so that they agree on the exact same set of
files; pyarrow's own discovery is not used for that reason.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

# Same convention as pyarrow.dataset's default ``ignore_prefixes``: Spark and
# Hadoop leave markers such as ``_SUCCESS``, ``_metadata`` and ``_temporary/``,
# editors and sync tools leave dot files; none of them hold rows.
IGNORED_PREFIXES: tuple[str, ...] = (".", "_")


def is_ignored_name(name: str) -> bool:
    """True for hidden and ``_``-prefixed entries, which never hold rows."""
    return name.startswith(IGNORED_PREFIXES)


@dataclass(frozen=True)
class DataFile:
    """A data file and the stat fields that reveal a change to it.

    ctime_ns and inode are kept besides size and mtime_ns because a chmod
    (which can make a dataset unreadable) only changes ctime, and an atomic
    replace by rename changes the inode even when size and mtime match.
    """

    path: Path
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def from_stat(cls, path: Path, st: os.stat_result) -> DataFile:
        return cls(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def list_data_files(path: Path) -> tuple[Path, ...]:
    """Paths of the data files of the dataset rooted at ``path``; see scan_data_files."""
    return tuple(f.path for f in scan_data_files(path))


def scan_data_files(path: Path) -> tuple[DataFile, ...]:
    """Return the data files of a dataset rooted at ``path``, sorted by path.

    A regular file is its own single data file. A directory is walked
    recursively (following symlinks, each directory visited once so a link
    cycle cannot hang the daemon), skipping ignored names and anything that is
    not a regular file: opening a FIFO or a device would block or read
    garbage.

    Raises OSError (FileNotFoundError, PermissionError, ...) when the path or
    a directory under it cannot be read; the error names the offending path.
    """
    st = path.stat()
    if stat.S_ISREG(st.st_mode):
        return (DataFile.from_stat(path, st),)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file or directory", str(path))

    files: list[DataFile] = []
    visited: set[tuple[int, int]] = {(st.st_dev, st.st_ino)}
    pending: list[Path] = [path]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if is_ignored_name(entry.name):
                    continue
                entry_stat = entry.stat(follow_symlinks=True)
                if stat.S_ISDIR(entry_stat.st_mode):
                    key = (entry_stat.st_dev, entry_stat.st_ino)
                    if key not in visited:
                        visited.add(key)
                        pending.append(Path(entry.path))
                elif stat.S_ISREG(entry_stat.st_mode):
                    files.append(DataFile.from_stat(Path(entry.path), entry_stat))
    files.sort(key=lambda f: str(f.path))
    return tuple(files)
