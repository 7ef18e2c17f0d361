"""The policy in force, and replacing it on reload without ever being without one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent.config.errors import ConfigError
from agent.governance.model import Policy


@dataclass(frozen=True)
class ReloadResult:
    applied: bool
    policy: Policy
    # Why the new file was rejected; empty when applied.
    error: str = ""


class PolicyInForce:
    """Holds the current policy. Readers get an immutable snapshot; a reload
    swaps it atomically, and a broken new file leaves the old one in force."""

    def __init__(self, initial: Policy, load: Callable[[], Policy] | None = None) -> None:
        self._policy = initial
        self._load = load
        self._lock = threading.Lock()

    def current(self) -> Policy:
        return self._policy

    def reload(self) -> ReloadResult:
        with self._lock:
            if self._load is None:
                return ReloadResult(False, self._policy, "this agent runs on the development policy; nothing to reload")
            try:
                policy = self._load()
            except ConfigError as exc:
                return ReloadResult(False, self._policy, str(exc))
            self._policy = policy
            return ReloadResult(True, policy)
