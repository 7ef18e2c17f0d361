"""Child agent processes for the demos: start, wait until serving, stop in order."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO


class DemoError(Exception):
    """The demo could not run; the message says which step failed."""


def wait_for_port(
    port_file: Path, process: subprocess.Popen[bytes], timeout: float, name: str = "the agent", log: Path | None = None
) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = ""
            if log is not None and log.exists():
                tail = "; the end of its log:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise DemoError(f"{name} exited early with code {process.returncode}{tail}")
        text = port_file.read_text() if port_file.exists() else ""
        if text.strip().isdigit():
            return int(text)
        time.sleep(0.05)
    raise DemoError(f"{name} did not start listening within {timeout} s")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Turns the first SIGTERM or SIGINT into KeyboardInterrupt so that `finally` blocks run.

    Python's default for SIGTERM is to die on the spot, which would leave the
    child agent running and the temp dir (with a CA private key) on disk.
    Later signals are ignored so that they cannot cut the clean-up short.
    Raising is all the handler does; it neither logs nor takes locks.
    """
    if sys.platform == "win32":  # pragma: no cover - the agent is POSIX-only
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    # SIGINT too: a second Ctrl-C during the clean-up must not cut it short.
    previous_int = signal.signal(signal.SIGINT, interrupt)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def stop_child(process: subprocess.Popen[bytes], out: TextIO, *, signalled: bool = False) -> None:
    """SIGTERM (unless ``signalled`` already), then SIGKILL after 30 s."""
    if process.poll() is not None:
        return
    if not signalled:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    print(f"\nagent stopped on SIGTERM with exit code {code}", file=out)
