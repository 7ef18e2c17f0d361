"""The sd_notify protocol, spoken directly: one datagram per message to $NOTIFY_SOCKET.

The protocol is a few lines (newline-separated KEY=VALUE pairs in one
AF_UNIX datagram), so it is implemented here rather than pulling in a C
binding. Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so
`serve` uses the same code path in a terminal, in tests and under systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

# What systemd hands the main process; removed from the environment once read
# so that worker processes cannot notify or ping in the agent's name.
NOTIFY_VARIABLES: tuple[str, ...] = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class NotifySocketError(Exception):
    """$NOTIFY_SOCKET or $WATCHDOG_USEC holds something that is not a usable value."""


@dataclass(frozen=True)
class SystemdNotifier:
    """Sends READY/STOPPING/STATUS/WATCHDOG messages to systemd, if it asked for them.

    `address` is None when not started by systemd with Type=notify;
    `watchdog_seconds` is how often to ping (half of WatchdogSec), None when
    no watchdog is configured for this process.
    """

    address: str | None = None
    watchdog_seconds: float | None = None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str], pid: int | None = None) -> SystemdNotifier:
        """Reads and removes systemd's variables from `environ` (normally os.environ)."""
        values = {name: environ.pop(name, "") for name in NOTIFY_VARIABLES}
        return cls.from_values(values, os.getpid() if pid is None else pid)

    @classmethod
    def from_values(cls, values: Mapping[str, str], pid: int) -> SystemdNotifier:
        raw_address = values.get("NOTIFY_SOCKET", "")
        address: str | None = None
        if raw_address:
            if not raw_address.startswith(("/", "@")):
                raise NotifySocketError(
                    f"NOTIFY_SOCKET must be an absolute path or @abstract name, got {raw_address!r}"
                )
            # "@name" is a socket in the abstract namespace (leading NUL byte).
            address = "\0" + raw_address[1:] if raw_address.startswith("@") else raw_address
        return cls(address=address, watchdog_seconds=_watchdog_seconds(values, pid))

    def send(self, *assignments: str) -> bool:
        """Sends KEY=VALUE lines as one datagram; False if not under systemd or the send failed.

        A failed notification must never take the agent down: systemd then
        times the start out or restarts it, which is the right outcome.
        """
        if self.address is None or not assignments:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        if self.watchdog_seconds is None:
            return False
        return self.send("WATCHDOG=1")


def _watchdog_seconds(values: Mapping[str, str], pid: int) -> float | None:
    raw_usec = values.get("WATCHDOG_USEC", "")
    if not raw_usec:
        return None
    raw_pid = values.get("WATCHDOG_PID", "")
    # WATCHDOG_PID names the process systemd expects pings from; another
    # process that inherited the variables must not ping.
    if raw_pid and raw_pid.strip() != str(pid):
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        raise NotifySocketError(f"WATCHDOG_USEC must be a whole number of microseconds, got {raw_usec!r}") from None
    if usec <= 0:
        raise NotifySocketError(f"WATCHDOG_USEC must be positive, got {raw_usec!r}")
    # Half the timeout, as sd_watchdog_enabled(3) recommends: one late ping
    # is not yet a restart.
    return usec / 1_000_000 / 2


class WatchdogPacer:
    """Decides when the serving loop owes systemd a ping; the loop itself sends it.

    Pings come only from the loop that also handles signals: if that loop
    hangs or the process is frozen, pinging stops and systemd restarts it.
    """

    def __init__(self, notifier: SystemdNotifier, now: float) -> None:
        self._notifier = notifier
        self._next = now

    def timeout(self, now: float, longest: float | None) -> float | None:
        """How long the loop may block before the next ping is due (at most `longest`)."""
        interval = self._notifier.watchdog_seconds
        if interval is None:
            return longest
        remaining = max(self._next - now, 0.0)
        return remaining if longest is None else min(remaining, longest)

    def tick(self, now: float, alive: bool) -> None:
        """Pings if one is due and the server still runs; a dead server earns no ping."""
        interval = self._notifier.watchdog_seconds
        if interval is None or now < self._next or not alive:
            return
        self._notifier.watchdog()
        self._next = now + interval
