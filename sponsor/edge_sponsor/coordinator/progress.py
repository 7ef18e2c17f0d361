"""Showing a federated run: a live progress bar on a terminal, plain lines elsewhere.

Both print the same line per round, so a log file and a terminal tell one story.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edge_sponsor.coordinator.report import RoundRecord, SiteTask


def noisy(name: str, value: float, sd: float | None) -> str:
    """``name value ±sd``: a DP metric is shown with its noise, never as an exact-looking number."""
    if sd is None or not math.isfinite(sd):
        return f"{name} {value:.3f} (noisy)"
    return f"{name} {value:.3f} ±{sd:.3f}"


def round_line(record: RoundRecord, rounds: int) -> str:
    sites = len(record.training)
    returned = sites - len(record.missing_sites)
    parts = [f"round {record.round}/{rounds}", f"{returned}/{sites} sites", f"{record.seconds:.1f} s"]
    if not record.updated:
        parts.append("no quorum, model unchanged")
    parts += [noisy(name, value, record.metrics_noise_sd.get(name)) for name, value in record.metrics.items()]
    line = "  ".join(parts)
    failures = [t for t in record.training + record.evaluation if t.status != "ok"]
    for task in failures:
        line += f"\n    {task.site} {task.kind}: {task.status} {task.detail}".rstrip()
    return line


class LineObserver:
    """One line per round and per note: for logs, CI and pipes."""

    def __init__(self, out: TextIO, rounds: int) -> None:
        self.out = out
        self.rounds = rounds

    def __enter__(self) -> LineObserver:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.out.flush()

    def note(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def task_finished(self, round_number: int, task: SiteTask) -> None:
        pass  # a round's line lists its failures

    def round_finished(self, record: RoundRecord) -> None:
        print(round_line(record, self.rounds), file=self.out, flush=True)


class BarObserver:
    """A live bar of rounds and of the current round's tasks, with the round lines above it."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.console = console
        self.rounds = rounds
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._rounds_bar = self._progress.add_task("rounds done: 0", total=rounds)
        self._done = 0

    def __enter__(self) -> BarObserver:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def note(self, message: str) -> None:
        self._progress.console.print(message, markup=False, highlight=False)

    def task_finished(self, round_number: int, task: SiteTask) -> None:
        pass  # the bar moves per round; failures are listed in the round's line

    def round_finished(self, record: RoundRecord) -> None:
        self._progress.console.print(round_line(record, self.rounds), markup=False, highlight=False)
        self._done = max(self._done, record.round)
        self._progress.update(self._rounds_bar, completed=self._done, description=f"rounds done: {self._done}")


def observer_for(out: TextIO, rounds: int) -> LineObserver | BarObserver:
    """A bar when ``out`` is a terminal, lines otherwise."""
    if out.isatty():
        return BarObserver(Console(file=out), rounds)
    return LineObserver(out, rounds)


class QuietObserver:
    """Shows nothing: for a caller that prints its own lines (the study commands) or none (tests)."""

    def note(self, message: str) -> None:
        pass

    def task_finished(self, round_number: int, task: SiteTask) -> None:
        pass

    def round_finished(self, record: RoundRecord) -> None:
        pass
