"""Cost of padding every DP step's wrapper work to a size independent of its Poisson sample.

    .venv/bin/python bench/timing_padding.py [--rows 100000] [--rates 0.001,0.01,0.05] [--repeats 3]

Model: the zoo's MLP 30-64-64-2, one onnxruntime thread, rows in memory (ArrayRowSource,
so the figures are the wrapper's share; reading Parquet adds the same time to both).
For each sampling rate q it prints the median time of one ``dp_gradient`` step with and
without ``Controls(pad_timing=...)``, the expected sample q*N, the padded size, and the
overhead. The padded size is reached whatever the sample: that is the protection.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.manifest import parse_manifest
from agent.privacy.sampling import padded_sample_size
from agent.runtime.isolation import GraphRole
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import Controls, GradientSettings, dp_gradient
from edge_sponsor.publisher.packaging import FeatureColumn, complete_manifest, zoo_graphs, zoo_manifest_fields
from edge_sponsor.publisher.zoo import build_mlp_classifier
from tests.runtime.helpers import ArrayRowSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rates", default="0.001,0.01,0.05")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = build_mlp_classifier(30, (64, 64), 2)
    graphs = zoo_graphs(model)
    features = [FeatureColumn(f"f{i}", "float64") for i in range(30)]
    fields = zoo_manifest_fields(
        model, name="acme/bench", version="1.0.0", publisher="acme", features=features, label_columns=("label",)
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, graphs))))
    wrapper = CompiledWrapper(graphs["grad"], manifest, GraphRole.GRADIENT)
    parameters = {p.name: np.full(p.shape, 0.01, np.float32) for p in model.parameters}
    rng = np.random.default_rng(0)
    rows = ArrayRowSource(
        rng.normal(size=(args.rows, 30)).astype(np.float32), rng.integers(0, 2, args.rows).astype(np.int64)
    )

    def step(rate: float, pad: bool) -> float:
        started = time.perf_counter()
        dp_gradient(wrapper, rows, parameters, GradientSettings(1.0, 1.0, rate), controls=Controls(pad_timing=pad))
        return time.perf_counter() - started

    step(0.01, True)  # warm-up
    print(f"N = {args.rows} rows, MLP 30-64-64-2, median of {args.repeats}")
    print(f"{'q':>7} {'q*N':>7} {'padded':>7} {'plain ms':>9} {'padded ms':>10} {'overhead':>9}")
    for rate in (float(r) for r in args.rates.split(",")):
        # Alternated, so that drifting load on the machine hits both alike.
        runs = [(step(rate, False), step(rate, True)) for _ in range(args.repeats)]
        plain = statistics.median(r[0] for r in runs) * 1000
        padded = statistics.median(r[1] for r in runs) * 1000
        size = padded_sample_size(args.rows, rate)
        print(
            f"{rate:>7g} {rate * args.rows:>7.0f} {size:>7} {plain:>9.1f} {padded:>10.1f} {padded / plain - 1:>9.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
