"""Notices a stream on which nothing has moved for a while, on either end of RunTask.

A stalled peer does not end a gRPC stream by itself: the side waiting for it
would hold a thread (and on the agent a budget reservation) for as long as the
peer likes. A fixed deadline would also cut off a large but progressing
transfer, so the measure is the time since anything last moved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class IdleTimer:
    """Calls ``on_idle`` once, from its own thread, when ``seconds`` pass without a touch while armed.

    ``pause()`` disarms it while this side itself is busy (the peer owes nothing
    then); ``resume()`` re-arms it and counts from that moment.
    """

    def __init__(self, seconds: float, on_idle: Callable[[], None], *, name: str = "idle-timer") -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        self.seconds = seconds
        self._on_idle = on_idle
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._paused = False
        self._done = threading.Event()
        self._fired = threading.Event()
        threading.Thread(target=self._watch, name=name, daemon=True).start()

    @property
    def fired(self) -> bool:
        return self._fired.is_set()

    def touch(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        wait = self.seconds
        while not self._done.wait(timeout=wait):
            with self._lock:
                idle = time.monotonic() - self._last
                if self._paused or idle < self.seconds:
                    wait = self.seconds if self._paused else self.seconds - idle
                    continue
                self._fired.set()
            if not self._done.is_set():
                self._on_idle()
            return
