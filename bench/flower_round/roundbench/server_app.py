"""ServerApp: FedAvg over every connected SuperNode, timing each round as the ServerApp sees it.

A round is timed from ``configure_train`` (the strategy builds the round's messages from
the current parameters) to the end of ``aggregate_train`` (FedAvg has averaged the
replies). Federated evaluation is off (``fraction_evaluate=0``): the edge-agent round it
is compared with is one training task per site. After averaging, every parameter is
moved by a small amount, as a training round would move it: Flower's object store is
content-addressed, and parameters that did not change would not travel again.

With ``poll`` > 0 in the run config (the "tuned" setting), the strategy's grid waits for
replies by calling the Grid's public ``push_messages``/``pull_messages`` itself every
``poll`` seconds; Flower's own ``send_and_receive`` sleeps a fixed 3 s between pulls.

Each round's duration is written to the run config's ``out`` (JSON) as soon as the
round ends, so a run stopped early still leaves what it measured.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def matrix_shape(parameters: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b == parameters`` and ``a`` the largest divisor up to sqrt."""
    a = math.isqrt(parameters)
    while parameters % a:
        a -= 1
    return a, parameters // a


class PollingGrid:
    """The ServerApp's grid, but waiting for replies with a shorter poll than Flower's 3 s."""

    def __init__(self, inner: Grid, interval: float) -> None:
        self._inner = inner
        self._interval = interval

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        pending = set(self._inner.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (end is None or time.monotonic() < end):
            pulled = list(self._inner.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if pending:
                time.sleep(self._interval)
        return replies


class TimedFedAvg(FedAvg):
    def __init__(self, out: Path, nodes: int) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=nodes,
            min_available_nodes=nodes,
        )
        self.out = out
        self.seconds: list[float] = []
        self._started = 0.0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._started = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            moved = [a + np.float32(1e-3) for a in arrays.to_numpy_ndarrays()]
            arrays = ArrayRecord(moved, keep_input=False)
        self.seconds.append(time.perf_counter() - self._started)
        record = {"seconds": self.seconds, "replies": len(replies), "ok": arrays is not None}
        self.out.write_text(json.dumps(record))
        return arrays, metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    rounds = int(config["num-server-rounds"])
    parameters = int(config["parameters"])
    out = Path(str(config["out"]))
    rng = np.random.default_rng(0)
    initial = rng.standard_normal(matrix_shape(parameters), dtype=np.float32)
    poll = float(config["poll"])
    strategy = TimedFedAvg(out, int(config["nodes"]))
    polling: Any = PollingGrid(grid, poll) if poll > 0 else grid
    strategy.start(grid=polling, initial_arrays=ArrayRecord([initial], keep_input=False), num_rounds=rounds)
