"""Examples per second of DP-SGD on the zoo MLP: compiled batch vs Scan wrapper vs Opacus.

    make bench                      # creates .venv-bench (torch CPU + opacus), runs this
    .venv/bin/python bench/dp_throughput.py [--rows 100000] [--threads 1 2] [--repeats 3]
        [--rows-per-unit 1 10 1-10] [--no-units]
    .venv-bench/bin/python -W ignore::UserWarning bench/dp_throughput.py --threads 1   # with Opacus

The same run for every path: one epoch of DP-SGD over the same ``--rows`` rows of the
MLP 30-64-64-2 (ReLU, softmax cross-entropy), fixed consecutive batches of ``--batch``
(256) rows, per-example clipping at C = 1, Gaussian noise sigma * C = 1.1 added to each
step's clipped sum, an SGD update of the parameters after every step:

* compiled: :class:`agent.runtime.sessions.CompiledWrapper` in ``BATCHED`` mode (the
  agent's batching compiler over the package's single-example graph, clipping in the
  same onnxruntime graph), noise and update in NumPy;
* scan: the same with the ``Scan`` wrapper (the reference path);
* opacus: ``GradSampleModule`` + ``DPOptimizer`` (SGD) on the equivalent torch model;
  only when torch and opacus are importable (``make bench`` installs them in a separate
  environment; the agent's own environment never has torch);
* per unit (issue 20): the same epoch through the compiled wrapper with the rows grouped
  by privacy unit (``RowBatch.unit_starts``): each unit's rows are summed and the unit's
  sum clipped at C, one noise draw per step as above. Units are runs of consecutive rows
  of ``--rows-per-unit`` rows each: ``N`` (every unit N rows) or ``A-B`` (uniform in
  [A, B]); several layouts may be given (default ``1 10 1-10``). Each step holds whole units
  and exactly the rows of the per-row step at the same position (``--batch`` rows, the
  epoch's last step the remainder): sizes are drawn until the step's remaining rows fit
  one unit, which then takes them all (with ``10``, each 256-row step is 25 units of 10
  and one of 6). So per-unit and per-row compiled steps feed the same rows, and their
  ex/s (rows/s) compare directly; ``units/s`` is also printed. ``--no-units`` skips them.
  Every layout runs the per-unit graph; with ``1`` every step's units have one size, and
  the wrapper lays such a run out once and reuses it (``UnitLayouts``), as it would for
  any dataset with one row per patient.

Before timing, the clipped sums of one batch are compared across the three paths at
sigma = 0 (equal work). For the per-unit figures, also before timing and at sigma 0: the
compiled per-unit sum of each layout's first steps equals the ``Scan`` per-unit sum
(the ``Scan`` wrapper with ``units=True``), and with one row per unit it equals the
per-row compiled sum; a difference beyond float tolerance stops the run. The line says
which wrapper summed the units (``CompiledWrapper.unit_mode``): ``batched`` is the
compiled per-unit graph, ``scan`` a fallback that the figures then measure.

Each figure is the median of ``--repeats`` rounds; in a round every path runs one epoch,
the paths taking turns every 16 steps, so that a shared machine whose speed drifts slows
them alike; each ratio is taken round by round and the median over the rounds printed
(the 1-minute load average at the end of each thread count is printed too). Each
rate is also given per CPU second of the benchmark's process (``ex/cpu-s``, median of the
same runs), which other processes' load hardly moves at one thread. Issue 20's
target, at one thread: per-unit >= 0.8x per-row compiled and
>= 2x Opacus (per-example).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.manifest import Manifest, parse_manifest
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper, RuntimeMode
from edge_sponsor.publisher.packaging import FeatureColumn, complete_manifest, zoo_graphs, zoo_manifest_fields
from edge_sponsor.publisher.zoo import ZooModel, build_mlp_classifier

CLIP = 1.0
SIGMA = 1.1
LEARNING_RATE = 0.05
CHUNK = 16
"""Steps each path runs before the next takes its turn (see median_rates)."""
NAMES = ("W1", "b1", "W2", "b2", "Wout", "bout")


def mlp_manifest(model: ZooModel, graphs: dict[str, bytes]) -> Manifest:
    features = [FeatureColumn(f"f{i}", "float64") for i in range(model.num_features)]
    fields = zoo_manifest_fields(
        model, name="bench/mlp", version="1.0.0", publisher="bench", features=features, label_columns=["label"]
    )
    return parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, graphs))))


Step = tuple[int, int, np.ndarray | None]
"""One DP-SGD step's rows ``[start, stop)`` and their ``unit_starts`` (``None``: per row)."""


def row_steps(rows: int, batch: int) -> list[Step]:
    return [(start, min(start + batch, rows), None) for start in range(0, rows, batch)]


def parse_unit_sizes(text: str) -> tuple[int, int]:
    """``N`` or ``A-B`` (rows per unit, uniform in [A, B])."""
    low, _, high = text.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"rows per unit must be N or A-B, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"rows per unit must satisfy 1 <= A <= B, got {text!r}")
    return bounds


def unit_steps(rows: int, batch: int, sizes: tuple[int, int], seed: int) -> list[Step]:
    """The per-row steps' rows, each cut into whole units of consecutive rows (see the module doc)."""
    rng = np.random.default_rng(seed)
    steps: list[Step] = []
    for start, stop, _ in row_steps(rows, batch):
        starts, offset = [], 0
        while offset < stop - start:
            starts.append(offset)
            offset += min(int(rng.integers(sizes[0], sizes[1] + 1)), stop - start - offset)
        steps.append((start, stop, np.asarray(starts, np.int64)))
    return steps


def agent_epoch(
    wrapper: CompiledWrapper,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: list[Step],
    seed: int,
) -> Iterator[None]:
    """One DP-SGD epoch through the agent's wrapper, pausing every CHUNK steps."""
    rng = np.random.default_rng(seed)
    current = {k: v.copy() for k, v in params.items()}
    for index, (start, stop, unit_starts) in enumerate(steps, 1):
        total = wrapper.clipped_sum(current, RowBatch(x[start:stop], y[start:stop], unit_starts), CLIP)
        noisy = total + rng.normal(0.0, SIGMA * CLIP, total.shape)
        for name, grad in wrapper.unflatten(noisy).items():
            current[name] = (current[name] - LEARNING_RATE * grad / (stop - start)).astype(np.float32)
        if index % CHUNK == 0:
            yield


def run_through(epoch: Iterator[None]) -> None:
    for _ in epoch:
        pass


def max_difference(got: np.ndarray, expected: np.ndarray, what: str) -> float:
    """max |got - expected|; stops the run beyond float tolerance (rtol 1e-5, atol 1e-5 * C)."""
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * CLIP, err_msg=f"not equal work: {what}")
    return float(np.max(np.abs(got - expected)))


def check_units(
    compiled: CompiledWrapper,
    scan: CompiledWrapper,
    params: dict[str, np.ndarray],
    *,
    x: np.ndarray,
    y: np.ndarray,
    layouts: dict[str, list[Step]],
    batch: int,
) -> dict[str, float]:
    """At sigma 0: compiled per-unit sums == Scan per-unit sums (first steps of each layout);
    with one row per unit, == the per-row compiled sum. Returns the largest differences."""
    to_scan = 0.0
    for label, steps in layouts.items():
        for start, stop, unit_starts in steps[:4]:
            grouped = RowBatch(x[start:stop], y[start:stop], unit_starts)
            to_scan = max(
                to_scan,
                max_difference(
                    compiled.clipped_sum(params, grouped, CLIP),
                    scan.clipped_sum(params, grouped, CLIP),
                    f"compiled vs Scan per-unit sum, {label} rows per unit, rows {start}-{stop}",
                ),
            )
    singles = RowBatch(x[:batch], y[:batch], np.arange(min(batch, x.shape[0]), dtype=np.int64))
    to_rows = max_difference(
        compiled.clipped_sum(params, singles, CLIP),
        compiled.clipped_sum(params, RowBatch(x[:batch], y[:batch]), CLIP),
        "per-unit sum with one row per unit vs the per-row sum",
    )
    return {"compiled unit vs Scan unit": to_scan, "1-row units vs per-row": to_rows}


class OpacusRun:
    """GradSampleModule + DPOptimizer on the torch twin of the zoo MLP."""

    def __init__(self, params: dict[str, np.ndarray], threads: int) -> None:
        # torch lives only in the bench environment (make bench), never in the agent's.
        import torch  # noqa: PLC0415
        from opacus import GradSampleModule  # noqa: PLC0415
        from opacus.optimizers import DPOptimizer  # noqa: PLC0415

        torch.set_num_threads(threads)
        self.torch = torch
        layers = [torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(64, 2))
        with torch.no_grad():
            for layer, (w, b) in zip(self.net[::2], (("W1", "b1"), ("W2", "b2"), ("Wout", "bout")), strict=True):
                layer.weight.copy_(torch.from_numpy(params[w].T.copy()))  # zoo: x @ W; torch: x @ weight.T
                layer.bias.copy_(torch.from_numpy(params[b]))
        self.model = GradSampleModule(self.net)
        self.optimizer = DPOptimizer(
            torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE),
            noise_multiplier=SIGMA,
            max_grad_norm=CLIP,
            expected_batch_size=256,
            loss_reduction="mean",
        )
        self.loss = torch.nn.CrossEntropyLoss(reduction="mean")

    def clipped_sum(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The sum of clipped per-example gradients of one batch (no noise, no step), zoo layout."""
        torch = self.torch
        self.optimizer.noise_multiplier = 0.0
        self.optimizer.expected_batch_size = x.shape[0]
        self.optimizer.zero_grad()
        self.loss(self.model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        self.optimizer.pre_step()
        pieces = []
        for layer in self.net[::2]:
            pieces += [layer.weight.grad.T.reshape(-1), layer.bias.grad.reshape(-1)]
        total = torch.cat(pieces).double().numpy() * x.shape[0]  # a copy, before zero_grad
        self.optimizer.zero_grad()
        self.optimizer.noise_multiplier = SIGMA
        self.optimizer.expected_batch_size = 256
        return total

    def epoch(self, x: np.ndarray, y: np.ndarray, batch: int) -> Iterator[None]:
        """One epoch, pausing every CHUNK steps."""
        torch = self.torch
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        for index, start in enumerate(range(0, x.shape[0], batch), 1):
            self.optimizer.zero_grad()
            self.loss(self.model(xt[start : start + batch]), yt[start : start + batch]).backward()
            self.optimizer.step()
            if index % CHUNK == 0:
                yield


@dataclass(frozen=True)
class Rate:
    """Rows per wall-clock second (``wall``, median, and each run's) and per CPU second of
    this process (``cpu``, median): at one thread the CPU figure hardly moves when other
    processes load the machine, the wall figure does."""

    wall: float
    runs: list[float]
    cpu: float
    cpu_runs: list[float]

    def over(self, other: Rate) -> tuple[float, float]:
        """This rate over ``other``, round by round (the two ran in the same round, close in
        time), median over the rounds: wall and CPU figures. A machine whose speed drifts
        between rounds moves both runs of a round alike, and the ratio hardly."""
        return (
            statistics.median(a / b for a, b in zip(self.runs, other.runs, strict=True)),
            statistics.median(a / b for a, b in zip(self.cpu_runs, other.cpu_runs, strict=True)),
        )


def median_rates(rows: int, repeats: int, runs: dict[str, Callable[[], Iterator[None]]]) -> dict[str, Rate]:
    """Rows/s of each run, median of ``repeats`` rounds. Within a round the epochs advance
    CHUNK steps each in turn (a fraction of a second), so a machine whose speed changes
    from one second to the next slows every path alike, and each round's ratios hold."""
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        active = {name: make() for name, make in runs.items()}
        seconds = dict.fromkeys(runs, 0.0)
        cpu_seconds = dict.fromkeys(runs, 0.0)
        while active:
            for name, epoch in list(active.items()):
                t0, c0 = time.perf_counter(), time.process_time()
                if next(epoch, StopIteration) is StopIteration:
                    del active[name]
                seconds[name] += time.perf_counter() - t0
                cpu_seconds[name] += time.process_time() - c0
        for name in runs:
            wall[name].append(rows / seconds[name])
            cpu[name].append(rows / max(cpu_seconds[name], 1e-9))
    return {
        name: Rate(statistics.median(wall[name]), wall[name], statistics.median(cpu[name]), cpu[name]) for name in runs
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime / torch intra-op threads")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-opacus", action="store_true", help="skip Opacus even if torch is importable")
    parser.add_argument(
        "--rows-per-unit",
        nargs="+",
        default=["1", "10", "1-10"],
        metavar="N|A-B",
        help="per-unit layouts: N rows per unit, or uniform in [A, B] (default: 1 10 1-10)",
    )
    parser.add_argument("--no-units", action="store_true", help="skip the per-unit figures")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    unit_layouts = {} if args.no_units else {text: parse_unit_sizes(text) for text in args.rows_per_unit}

    model = build_mlp_classifier(30, (64, 64), 2)
    graphs = zoo_graphs(model)
    manifest = mlp_manifest(model, graphs)
    rng = np.random.default_rng(0)
    params = model.init_parameters(rng)
    x = rng.normal(size=(args.rows, 30)).astype(np.float32)
    y = rng.integers(0, 2, args.rows).astype(np.int64)
    have_opacus = not args.no_opacus and all(importlib.util.find_spec(m) is not None for m in ("torch", "opacus"))
    per_row = row_steps(args.rows, args.batch)
    layouts = {label: unit_steps(args.rows, args.batch, sizes, seed=2) for label, sizes in unit_layouts.items()}

    size = sum(p.size for p in params.values())
    print(f"model        MLP 30-64-64-2 ReLU ({size} parameters); {args.rows} rows, 1 epoch, batch {args.batch}")
    print(f"DP-SGD       C = {CLIP}, sigma = {SIGMA}, noise per step, SGD lr {LEARNING_RATE}; median of {args.repeats}")
    for label, steps in layouts.items():
        units = sum(int(u.size) for _, _, u in steps if u is not None)
        print(
            f"per unit     {label} rows per unit: {units} units in {len(steps)} steps "
            f"({units / len(steps):.1f} units, {args.rows / len(steps):.1f} rows per step, as per row)"
        )
    for threads in args.threads:
        compiled = CompiledWrapper(
            graphs["grad"], manifest, GraphRole.GRADIENT, intra_op_threads=threads, mode=RuntimeMode.BATCHED
        )
        scan = CompiledWrapper(
            graphs["grad"], manifest, GraphRole.GRADIENT, intra_op_threads=threads, mode=RuntimeMode.SCAN
        )
        check = RowBatch(x[: args.batch], y[: args.batch])
        reference = scan.clipped_sum(params, check, CLIP)
        differences = {"compiled": float(np.max(np.abs(compiled.clipped_sum(params, check, CLIP) - reference)))}
        opacus_run = OpacusRun(params, threads) if have_opacus else None
        if opacus_run is not None:
            differences["opacus"] = float(
                np.max(np.abs(opacus_run.clipped_sum(x[: args.batch], y[: args.batch]) - reference))
            )
        unit_differences = (
            check_units(compiled, scan, params, x=x, y=y, layouts=layouts, batch=args.batch) if layouts else {}
        )
        warm = 2048 // args.batch + 1
        runs: dict[str, Callable[[], Iterator[None]]] = {
            "compiled": lambda w=compiled: agent_epoch(w, params, x, y, steps=per_row, seed=1),
        }
        run_through(agent_epoch(compiled, params, x, y, steps=per_row[:warm], seed=0))  # warm-up
        for label, steps in layouts.items():
            run_through(agent_epoch(compiled, params, x, y, steps=steps[:warm], seed=0))  # warm-up
            runs[f"units {label}"] = lambda w=compiled, s=steps: agent_epoch(w, params, x, y, steps=s, seed=1)
        if opacus_run is not None:
            run_through(opacus_run.epoch(x[:2048], y[:2048], args.batch))  # warm-up
            runs["opacus"] = lambda o=opacus_run: o.epoch(x, y, args.batch)
        runs["scan"] = lambda w=scan: agent_epoch(w, params, x, y, steps=per_row, seed=1)
        measured = median_rates(args.rows, args.repeats, runs)
        rates: dict[str, Rate] = {name: measured[name] for name in ("compiled", "scan", "opacus") if name in measured}
        unit_rates = {label: measured[f"units {label}"] for label in layouts}
        print(
            f"\n{threads} thread(s)  load average {os.getloadavg()[0]:.2f}  (max |sum - Scan sum| over one batch "
            "at sigma 0: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()) + ")"
        )
        for name, rate in rates.items():
            print(
                f"  {name:<9} {rate.wall:>10,.0f} ex/s  {rate.cpu:>10,.0f} ex/cpu-s   "
                f"(runs: {', '.join(f'{r:,.0f}' for r in rate.runs)})"
            )
        fast = rates["compiled"]
        print("  compiled / scan   {:.1f}x  (cpu {:.1f}x)".format(*fast.over(rates["scan"])))
        if "opacus" in rates:
            print("  compiled / opacus {:.2f}x  (cpu {:.2f}x)".format(*fast.over(rates["opacus"])))
        else:
            print("  opacus: torch/opacus not importable here (run `make bench`)")
        if not layouts:
            continue
        print_units(compiled, unit_differences, unit_rates=unit_rates, rates=rates, layouts=layouts, rows=args.rows)


def print_units(
    compiled: CompiledWrapper,
    differences: dict[str, float],
    *,
    unit_rates: dict[str, Rate],
    rates: dict[str, Rate],
    layouts: dict[str, list[Step]],
    rows: int,
) -> None:
    print(
        f"  per unit (compiled wrapper, unit_mode {compiled.unit_mode.value}; equal work at sigma 0, max |diff|: "
        + ", ".join(f"{k} {v:.1e}" for k, v in differences.items())
        + ")"
    )
    for label, rate in unit_rates.items():
        units = sum(int(u.size) for _, _, u in layouts[label] if u is not None)
        print(
            f"  units {label:<5} {rate.wall:>8,.0f} ex/s  {rate.cpu:>10,.0f} ex/cpu-s  "
            f"{rate.wall * units / rows:>8,.0f} units/s   (runs: {', '.join(f'{r:,.0f}' for r in rate.runs)})"
        )
        for other in ("compiled", "opacus"):
            if other in rates:
                wall, cpu = rate.over(rates[other])
                print(f"    per-unit / {other:<8} {wall:.2f}x  (cpu {cpu:.2f}x)")


if __name__ == "__main__":
    main()
