"""How an admitted task can end without a result: the one vocabulary of task failures.

The worker reports the first six; the RPC layer ends a task with the last three when
the call stops, or its parameters prove malformed, before the task could compute. The values are what the audit log
records in task.failed's `failure`, so they are stable: never rename one.
"""

from __future__ import annotations

import enum


class FailureKind(enum.Enum):
    MEMORY = "memory"  # the address-space limit was hit
    CPU_TIME = "cpu_time"  # the CPU-time limit was hit
    WALL_TIME = "wall_time"  # the wall-clock limit was hit
    CANCELLED = "cancelled"  # CancelTask or the client went away while the task computed
    TASK_ERROR = "task_error"  # the computation refused its input (message is safe to show)
    CRASHED = "crashed"  # anything else: the worker died or raised unexpectedly
    ABANDONED = "abandoned"  # the call ended before the task began computing
    STALLED = "stalled"  # the parameter upload stopped moving for server.stream_idle_seconds
    INVALID_PARAMETERS = "invalid_parameters"  # the parameters sent do not match what the spec declared
