"""The policy status file: how `edge-agent policy reload` learns what the daemon did.

The daemon rewrites it atomically whenever it loads or rejects a policy; the
CLI polls it after sending SIGHUP.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.durable import write_private

STATUS_FILENAME = "policy-status.json"
PID_FILENAME = "agent.pid"


@dataclass(frozen=True)
class PolicyStatus:
    digest: str
    source: str
    loaded_at: str
    # The last rejected reload, if it came after the load above.
    last_error: str = ""
    last_error_at: str = ""

    def write(self, state_dir: Path) -> None:
        write_private(state_dir / STATUS_FILENAME, json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def read(cls, state_dir: Path) -> PolicyStatus | None:
        try:
            data = json.loads((state_dir / STATUS_FILENAME).read_text())
            return cls(**{k: str(data.get(k, "")) for k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return None


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
