"""Examples per second of DP-SGD on the zoo MLP: compiled batch vs Scan wrapper vs Opacus.

    make bench                      # creates .venv-bench (torch CPU + opacus), runs this
    .venv/bin/python bench/dp_throughput.py [--rows 100000] [--threads 1 2] [--repeats 3]

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
  environment; the agent's own environment never has torch).

Before timing, the clipped sums of one batch are compared across the three paths at
sigma = 0 (equal work). Each figure is the median of ``--repeats`` runs; on a shared
machine they are noisy, so compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
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
NAMES = ("W1", "b1", "W2", "b2", "Wout", "bout")


def mlp_manifest(model: ZooModel, graphs: dict[str, bytes]) -> Manifest:
    features = [FeatureColumn(f"f{i}", "float64") for i in range(model.num_features)]
    fields = zoo_manifest_fields(
        model, name="bench/mlp", version="1.0.0", publisher="bench", features=features, label_columns=["label"]
    )
    return parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, graphs))))


def agent_epoch(
    wrapper: CompiledWrapper, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, batch: int, seed: int
) -> dict[str, np.ndarray]:
    """One DP-SGD epoch through the agent's wrapper; returns the final parameters."""
    rng = np.random.default_rng(seed)
    current = {k: v.copy() for k, v in params.items()}
    for start in range(0, x.shape[0], batch):
        total = wrapper.clipped_sum(current, RowBatch(x[start : start + batch], y[start : start + batch]), CLIP)
        noisy = total + rng.normal(0.0, SIGMA * CLIP, total.shape)
        for name, grad in wrapper.unflatten(noisy).items():
            current[name] = (current[name] - LEARNING_RATE * grad / batch).astype(np.float32)
    return current


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

    def epoch(self, x: np.ndarray, y: np.ndarray, batch: int) -> None:
        torch = self.torch
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        for start in range(0, x.shape[0], batch):
            self.optimizer.zero_grad()
            self.loss(self.model(xt[start : start + batch]), yt[start : start + batch]).backward()
            self.optimizer.step()


def median_rate(rows: int, repeats: int, run: Callable[[], object]) -> tuple[float, list[float]]:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        rates.append(rows / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime / torch intra-op threads")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-opacus", action="store_true", help="skip Opacus even if torch is importable")
    args = parser.parse_args()

    model = build_mlp_classifier(30, (64, 64), 2)
    graphs = zoo_graphs(model)
    manifest = mlp_manifest(model, graphs)
    rng = np.random.default_rng(0)
    params = model.init_parameters(rng)
    x = rng.normal(size=(args.rows, 30)).astype(np.float32)
    y = rng.integers(0, 2, args.rows).astype(np.int64)
    have_opacus = not args.no_opacus and all(importlib.util.find_spec(m) is not None for m in ("torch", "opacus"))

    size = sum(p.size for p in params.values())
    print(f"model        MLP 30-64-64-2 ReLU ({size} parameters); {args.rows} rows, 1 epoch, batch {args.batch}")
    print(f"DP-SGD       C = {CLIP}, sigma = {SIGMA}, noise per step, SGD lr {LEARNING_RATE}; median of {args.repeats}")
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
        agent_epoch(compiled, params, x[:2048], y[:2048], batch=args.batch, seed=0)  # warm-up
        rates = {
            "compiled": median_rate(
                args.rows, args.repeats, lambda w=compiled: agent_epoch(w, params, x, y, batch=args.batch, seed=1)
            ),
            "scan": median_rate(
                args.rows, args.repeats, lambda w=scan: agent_epoch(w, params, x, y, batch=args.batch, seed=1)
            ),
        }
        if opacus_run is not None:
            opacus_run.epoch(x[:2048], y[:2048], args.batch)  # warm-up
            rates["opacus"] = median_rate(args.rows, args.repeats, lambda o=opacus_run: o.epoch(x, y, args.batch))
        print(
            f"\n{threads} thread(s)  (max |sum - Scan sum| over one batch at sigma 0: "
            + ", ".join(f"{k} {v:.1e}" for k, v in differences.items())
            + ")"
        )
        for name, (median, runs) in rates.items():
            print(f"  {name:<9} {median:>10,.0f} ex/s   (runs: {', '.join(f'{r:,.0f}' for r in runs)})")
        fast = rates["compiled"][0]
        print(f"  compiled / scan   {fast / rates['scan'][0]:.1f}x")
        if "opacus" in rates:
            print(f"  compiled / opacus {fast / rates['opacus'][0]:.2f}x")
        else:
            print("  opacus: torch/opacus not importable here (run `make bench`)")


if __name__ == "__main__":
    main()
