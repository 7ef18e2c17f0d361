"""Examples per second of the isolation wrapper (the safe path) against a batched, unsafe reference.

    .venv/bin/python bench/dp_throughput.py [--rows 100000] [--threads 1] [--repeats 3]

Model: the zoo's MLP 30-64-64-2 (ReLU). Both paths compute the clipped per-example
gradient sum with Gaussian noise at one onnxruntime / NumPy thread:

* wrapper: ``agent.runtime.tasks.dp_gradient`` at q = 1 (the Scan over the package's
  single-example graph with the agent's clipping; rows fed in batches of ``--batch``);
* unsafe reference: per-example gradients of the same MLP computed for 256 rows at a
  time with batched NumPy (einsum outer products), clipped and summed in NumPy. It is
  what a batched per-example graph would compute, and it is unsafe for untrusted
  packages: in a package's batched graph rows could interact.

The two sums are compared (same clipping) before timing, so the figures are for equal work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.manifest import Manifest, parse_manifest
from agent.publisher.packaging import FeatureColumn, complete_manifest, zoo_graphs, zoo_manifest_fields
from agent.publisher.zoo import ZooModel, build_mlp_classifier
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import ArrayRowSource, RowBatch
from agent.runtime.sessions import WrapperCache
from agent.runtime.tasks import GradientSettings, dp_gradient

CLIP = 1.0
SIGMA = 1.1


def mlp_manifest(model: ZooModel, graphs: dict[str, bytes]) -> Manifest:
    features = [FeatureColumn(f"f{i}", "float64") for i in range(model.num_features)]
    fields = zoo_manifest_fields(
        model, name="bench/mlp", version="1.0.0", publisher="bench", features=features, label_columns=["label"]
    )
    return parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, graphs))))


def unsafe_batched_sum(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 256) -> np.ndarray:
    """Per-example gradients of the ReLU MLP for ``batch`` rows at a time, clipped, summed (float32 math)."""
    w1, b1, w2, b2, wo, bo = (params[k] for k in ("W1", "b1", "W2", "b2", "Wout", "bout"))
    total = np.zeros(sum(p.size for p in (w1, b1, w2, b2, wo, bo)), np.float64)
    for start in range(0, x.shape[0], batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        a1 = xb @ w1 + b1
        h1 = np.maximum(a1, 0)
        a2 = h1 @ w2 + b2
        h2 = np.maximum(a2, 0)
        logits = h2 @ wo + bo
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        dlogits = p - np.eye(wo.shape[1], dtype=np.float32)[yb]
        da2 = (dlogits @ wo.T) * (a2 > 0)
        da1 = (da2 @ w2.T) * (a1 > 0)
        grads = [
            np.einsum("bi,bj->bij", xb, da1).reshape(len(xb), -1),
            da1,
            np.einsum("bi,bj->bij", h1, da2).reshape(len(xb), -1),
            da2,
            np.einsum("bi,bj->bij", h2, dlogits).reshape(len(xb), -1),
            dlogits,
        ]
        flat = np.concatenate(grads, axis=1)
        norms = np.sqrt(np.einsum("bi,bi->b", flat, flat, dtype=np.float64))
        finite = np.isfinite(norms)
        scale = np.where(finite, np.minimum(1.0, CLIP / np.maximum(norms, 1e-30)), 0.0)
        total += np.where(finite[:, None], flat, 0.0).T.astype(np.float64) @ scale
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--batch", type=int, default=16_384, help="rows per wrapper call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = build_mlp_classifier(30, (64, 64), 2)
    graphs = zoo_graphs(model)
    manifest = mlp_manifest(model, graphs)
    rng = np.random.default_rng(0)
    params = model.init_parameters(rng)
    x = rng.normal(size=(args.rows, 30)).astype(np.float32)
    y = rng.integers(0, 2, args.rows).astype(np.int64)

    t0 = time.perf_counter()
    wrapper = WrapperCache(intra_op_threads=args.threads).get(
        "sha256:bench", graphs["grad"], manifest, GraphRole.GRADIENT
    )
    build_seconds = time.perf_counter() - t0

    check = slice(0, 2000)
    safe = wrapper.clipped_sum(params, RowBatch(x[check], y[check]), CLIP)
    unsafe = unsafe_batched_sum(params, x[check], y[check])
    difference = float(np.max(np.abs(safe - unsafe)))

    source = ArrayRowSource(x, y, batch_size=args.batch)
    settings = GradientSettings(CLIP, SIGMA, 1.0)
    dp_gradient(wrapper, ArrayRowSource(x[:1000], y[:1000]), params, settings)  # warm-up
    wrapper_rates, unsafe_rates = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        dp_gradient(wrapper, source, params, settings)
        wrapper_rates.append(args.rows / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        noisy = unsafe_batched_sum(params, x, y) + rng.normal(0, SIGMA * CLIP, wrapper.layout.size)
        unsafe_rates.append(args.rows / (time.perf_counter() - t0))
        assert np.all(np.isfinite(noisy))

    best_wrapper, best_unsafe = max(wrapper_rates), max(unsafe_rates)
    print(f"model                 MLP 30-64-64-2 ({wrapper.layout.size} parameters), {args.rows} rows")
    print(f"threads               onnxruntime intra-op {args.threads}, numpy 1")
    print(f"wrapper build         {build_seconds * 1000:.0f} ms (checker + session, once per package)")
    print(f"max |safe - unsafe|   {difference:.2e} over 2000 rows (same clipped sum)")
    print(f"wrapper (Scan, safe)  {best_wrapper:,.0f} ex/s  (runs: {', '.join(f'{r:,.0f}' for r in wrapper_rates)})")
    print(f"numpy batched, unsafe {best_unsafe:,.0f} ex/s  (runs: {', '.join(f'{r:,.0f}' for r in unsafe_rates)})")
    print(f"ratio unsafe / safe   {best_unsafe / best_wrapper:.1f}x")


if __name__ == "__main__":
    main()
