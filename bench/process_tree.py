"""What /proc says about a process and its descendants: memory peaks and CPU time.

The benches run agents, their task workers and echo servers as processes; these
readers let a bench report what all of them together cost, not only itself.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def vm_kib(pid: int | str, key: str) -> int | None:
    """``VmHWM``/``VmRSS`` of a live process in KiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _stat_fields(pid: int) -> list[str]:
    # The command name in parentheses may hold spaces: fields start after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> dict[int, int]:
    """pid -> depth below ``pid`` for its live descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
    depth: dict[int, int] = {}
    for child in parents:
        level, current = 0, child
        while current in parents and current != pid and level < 8:
            current, level = parents[current], level + 1
        if current == pid and child != pid:
            depth[child] = level
    return depth


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants, each with its reaped children.

    A difference of two readings is the CPU that the whole tree used in between, as
    long as no process of it exited unreaped meanwhile.
    """
    ticks = 0
    for member in (pid, *descendants(pid)):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue  # gone between the listing and the read
        # utime, stime, cutime, cstime: fields 14-17 of stat(5), 11-14 after the name.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / _TICKS
