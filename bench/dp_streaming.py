"""Streams a Parquet dataset larger than the worker's memory limit through the data path and wrapper.

    .venv/bin/python bench/dp_streaming.py [--rows 6000000] [--headroom-mb 384] [--sampling-rate 0.005]

The parent writes ``--rows`` rows of 30 float64 features and an int64 label (the MLP
30-64-64-2's inputs; 248 bytes per decoded row) as uncompressed Parquet into a temporary
directory, then runs the task in a child process. The child imports everything, builds
the wrapper and its onnxruntime session, and only then sets ``RLIMIT_AS`` to its current
address-space size plus ``--headroom-mb`` (or to ``--limit-mb`` if given): the data path
must stream the whole dataset (``dp_gradient`` with Poisson rate ``--sampling-rate``) in
that headroom. It prints rows/s, the peak RSS and the limits; an allocation beyond the
limit would fail the child with ``MemoryError`` or an Arrow ``OutOfMemory``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agent.datasets.spec import DatasetFormat, DatasetSpec
from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.manifest import parse_manifest
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import ArrowRowSource, RowBatch
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import GradientSettings, dp_gradient
from edge_sponsor.publisher.packaging import FeatureColumn, complete_manifest, zoo_graphs, zoo_manifest_fields
from edge_sponsor.publisher.zoo import build_mlp_classifier

FEATURES = 30
ROW_GROUP = 100_000


def generate(directory: Path, rows: int) -> int:
    rng = np.random.default_rng(0)
    path = directory / "cohort.parquet"
    writer = None
    written = 0
    while written < rows:
        n = min(ROW_GROUP, rows - written)
        columns = {f"f{i}": rng.normal(size=n) for i in range(FEATURES)}
        columns["label"] = rng.integers(0, 2, n)
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table, row_group_size=ROW_GROUP)
        written += n
    assert writer is not None
    writer.close()
    return path.stat().st_size


def vm_size_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1])
    raise RuntimeError("no VmSize in /proc/self/status")


class CountingRows:
    """Counts what the data path yields (for the figures; the task itself releases no count)."""

    def __init__(self, source: ArrowRowSource) -> None:
        self.source = source
        self.rows = 0
        self.batch_count = 0

    def batches(self) -> Iterator[RowBatch]:
        for batch in self.source.batches():
            self.rows += batch.size
            self.batch_count += 1
            yield batch


def child(directory: Path, headroom_mb: int, limit_mb: int | None, rate: float, batch_size: int) -> None:
    model = build_mlp_classifier(FEATURES, (64, 64), 2)
    graphs = zoo_graphs(model)
    fields = zoo_manifest_fields(
        model,
        name="bench/mlp",
        version="1.0.0",
        publisher="bench",
        features=[FeatureColumn(f"f{i}", "float64") for i in range(FEATURES)],
        label_columns=["label"],
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, graphs))))
    wrapper = CompiledWrapper(graphs["grad"], manifest, GraphRole.GRADIENT)
    source = ArrowRowSource.open(
        DatasetSpec("bench", directory / "cohort.parquet", DatasetFormat.PARQUET), manifest, batch_size=batch_size
    )
    params = model.init_parameters(np.random.default_rng(0))

    start_vm = vm_size_kb() * 1024
    limit = limit_mb * 2**20 if limit_mb is not None else start_vm + headroom_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    counted = CountingRows(source)
    t0 = time.perf_counter()
    release = dp_gradient(wrapper, counted, params, GradientSettings(1.0, 1.1, rate))
    seconds = time.perf_counter() - t0
    assert all(np.all(np.isfinite(v)) for v in release.sums.values())
    print(
        json.dumps(
            {
                "rows": counted.rows,
                "batches": counted.batch_count,
                "start_rss": start_rss,
                "seconds": seconds,
                "start_vm": start_vm,
                "limit": limit,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "sampled_examples_expected": counted.rows * rate,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6_000_000)
    parser.add_argument("--headroom-mb", type=int, default=384, help="address space allowed above the child's start")
    parser.add_argument("--limit-mb", type=int, default=None, help="absolute RLIMIT_AS instead of start + headroom")
    parser.add_argument("--sampling-rate", type=float, default=0.005)
    parser.add_argument("--batch-size", type=int, default=16_384)
    parser.add_argument("--dir", type=Path, default=None, help="keep the generated data here (default: temp dir)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dir, args.headroom_mb, args.limit_mb, args.sampling_rate, args.batch_size)
        return

    with tempfile.TemporaryDirectory(prefix="dp-streaming-") as temp:
        directory = args.dir or Path(temp)
        directory.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        on_disk = generate(directory, args.rows)
        generated = time.perf_counter() - t0
        command = [sys.executable, __file__, "--child", "--dir", str(directory), "--headroom-mb", str(args.headroom_mb)]
        command += ["--sampling-rate", str(args.sampling_rate), "--batch-size", str(args.batch_size)]
        if args.limit_mb is not None:
            command += ["--limit-mb", str(args.limit_mb)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n")
            raise SystemExit(f"the child failed with exit code {done.returncode}")
        result = json.loads(done.stdout.strip().splitlines()[-1])

    mib = 2**20
    decoded = args.rows * (FEATURES + 1) * 8
    print(
        f"dataset               {args.rows:,} rows, {on_disk / mib:,.0f} MiB Parquet, {decoded / mib:,.0f} MiB decoded"
    )
    print(f"generated in          {generated:.1f} s")
    print(f"child address space   {result['start_vm'] / mib:,.0f} MiB at start (Python, numpy, onnxruntime, pyarrow)")
    headroom = (result["limit"] - result["start_vm"]) / mib
    print(f"RLIMIT_AS             {result['limit'] / mib:,.0f} MiB ({headroom:,.0f} MiB above the start)")
    print(f"streamed              {result['rows']:,} rows in {result['batches']} batches, {result['seconds']:.1f} s")
    print(
        f"throughput            {result['rows'] / result['seconds']:,.0f} rows/s (q = {args.sampling_rate}, "
        f"~{result['sampled_examples_expected']:,.0f} examples through the wrapper)"
    )
    before = result["start_rss"] / mib
    print(f"peak RSS              {result['peak_rss'] / mib:,.0f} MiB ({before:,.0f} MiB before streaming)")


if __name__ == "__main__":
    main()
