"""Peak RSS of grouping a dataset by privacy unit when its rows exceed the grouping memory.

    .venv/bin/python bench/unit_grouping_memory.py [--budget-mb 64] [--factor 5] [--repeats 3]
        [--rows-per-unit 1-10] [--files 5] [--dir DIR]

The parent writes a Parquet dataset (uncompressed, ``--files`` files, row groups of
65,536 rows) of 30 float64 features, an int64 label and an int64 ``patient_id``: the
MLP 30-64-64-2's inputs plus the unit column, 256 bytes per decoded row of used columns.
Units have ``--rows-per-unit`` rows (``N`` or ``A-B`` uniform) and the rows are shuffled
across every file: the dataset is NOT sorted by unit, a unit's rows lie in several files.
The row count makes the used columns ``--factor`` x ``--budget-mb`` (defaults: 5 x 64 MiB
= 320 MiB, 1,310,720 rows). No row holds a null, so every row is usable.

Each measurement runs in a fresh child process: it imports everything and builds the
manifest, then :meth:`agent.runtime.unit_rows.UnitRowSource.prepare` (over
``open_dataset(spec, with_unit=True)``, as the worker does, ``max_rows_per_unit`` 64
so nothing is capped) and one full pass of :meth:`UnitRowSource.batches`, touching every
batch's ``x`` and ``y`` (a pass maps each partition's saved arrays; the pages it reads
count in RSS). The child reports its peak RSS (``VmHWM``, cross-checked with its
``getrusage(RUSAGE_SELF).ru_maxrss``), its RSS before ``prepare`` and its peak RSS when
``prepare`` returns, and the peak of Arrow's default memory pool (bytes Arrow had
allocated at once, which RSS may exceed: allocators keep freed pages); while the child runs,
the parent polls the scratch directory every 20 ms for the bytes on disk (their peak).

Two configurations, on the same files:

* spill: ``memory_bytes`` = ``--budget-mb`` (the usable rows are ``--factor`` x that, so
  ``prepare`` spills them to unit-hashed partition files in the scratch directory);
* in memory: ``memory_bytes`` = 64 GiB (everything grouped in memory), the reference.

Each figure is the median of ``--repeats`` children (the runs are printed too). In the
worker, the grouping memory is ``max(16 MiB, worker memory limit / 8)``
(``agent/tasks/runner.py``): ``--budget-mb 64`` is the budget of a 512 MiB worker, and
``--factor 40`` makes the dataset 5x that worker's whole memory limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = 30
ROW_GROUP = 65_536
ROW_BYTES = (FEATURES + 2) * 8  # features, label and unit, all 8-byte columns
UNIT = "patient_id"
IN_MEMORY = 64 * 2**30
MIB = 2**20


def parse_unit_sizes(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"rows per unit must be N or A-B, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"rows per unit must satisfy 1 <= A <= B, got {text!r}")
    return bounds


def generate(directory: Path, rows: int, sizes: tuple[int, int], files: int) -> tuple[int, int]:
    """Writes the shuffled dataset; returns (units, bytes on disk)."""
    rng = np.random.default_rng(0)
    unit_sizes = rng.integers(sizes[0], sizes[1] + 1, rows // sizes[0] + 1)
    unit_sizes = unit_sizes[: int(np.searchsorted(np.cumsum(unit_sizes), rows)) + 1]
    unit_of_row = np.repeat(np.arange(unit_sizes.size, dtype=np.int64), unit_sizes)[:rows]
    rng.shuffle(unit_of_row)  # not sorted by unit: a unit's rows spread over the files
    per_file = -(-rows // files)
    for index, start in enumerate(range(0, rows, per_file)):
        with pq.ParquetWriter(directory / f"part-{index}.parquet", _schema(), compression="none") as writer:
            for chunk in range(start, min(start + per_file, rows), ROW_GROUP):
                n = min(ROW_GROUP, start + per_file - chunk, rows - chunk)
                columns = {f"f{i}": rng.normal(size=n) for i in range(FEATURES)}
                columns["label"] = rng.integers(0, 2, n)
                columns[UNIT] = unit_of_row[chunk : chunk + n]
                writer.write_table(pa.table(columns, schema=_schema()), row_group_size=ROW_GROUP)
    return int(np.unique(unit_of_row).size), sum(path.stat().st_size for path in directory.iterdir())


def _schema() -> pa.Schema:
    return pa.schema(
        [*(pa.field(f"f{i}", pa.float64()) for i in range(FEATURES)), ("label", pa.int64()), (UNIT, pa.int64())]
    )


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(data: Path, scratch: Path, memory_bytes: int) -> None:
    # The agent's imports only here: the parent stays small while it polls.
    from agent.datasets.inspection import open_dataset  # noqa: PLC0415
    from agent.datasets.spec import DatasetFormat, DatasetSpec  # noqa: PLC0415
    from agent.packages.canonical import canonical_json, parse_strict_json  # noqa: PLC0415
    from agent.packages.manifest import parse_manifest  # noqa: PLC0415
    from agent.runtime.unit_rows import UnitRowSource  # noqa: PLC0415
    from edge_sponsor.publisher.packaging import (  # noqa: PLC0415
        FeatureColumn,
        complete_manifest,
        zoo_graphs,
        zoo_manifest_fields,
    )
    from edge_sponsor.publisher.zoo import build_mlp_classifier  # noqa: PLC0415

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
    columns = (*(f"f{i}" for i in range(FEATURES)), "label")
    spec = DatasetSpec("bench", data, DatasetFormat.PARQUET, columns=columns, privacy_unit=UNIT)
    source = UnitRowSource(
        open_dataset(spec, with_unit=True), manifest, UNIT, max_rows_per_unit=64, memory_bytes=memory_bytes,
        scratch=scratch,
    )  # fmt: skip
    del graphs, model
    start_rss = _status_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    units = source.prepare()
    prepared = time.perf_counter() - t0
    prepare_peak = _status_kb("VmHWM") * 1024
    arrow_peak = pa.default_memory_pool().max_memory()
    rows = batches = 0
    checksum = 0.0
    t0 = time.perf_counter()
    for batch in source.batches():
        rows += batch.size
        batches += 1
        checksum += float(batch.x.sum()) + float(batch.y.sum())  # reads every row
    passed = time.perf_counter() - t0
    spilled = any(scratch.iterdir())
    source.close()
    print(
        json.dumps(
            {
                "units": units,
                "rows": rows,
                "batches": batches,
                "spilled": spilled,
                "start_rss": start_rss,
                "peak_rss": _status_kb("VmHWM") * 1024,
                "prepare_peak": prepare_peak,
                "arrow_peak": arrow_peak,
                "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "prepare_s": prepared,
                "pass_s": passed,
                "checksum": checksum,
            }
        )
    )


def _disk_bytes(directory: Path) -> int:
    total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # removed while we walked
                total += (Path(root) / name).stat().st_size
    return total


def measure(data: Path, scratch_parent: Path, memory_bytes: int) -> dict[str, float]:
    """One child; its report, its ru_maxrss and the scratch bytes at peak."""
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=scratch_parent))
    command = [sys.executable, __file__, "--child", "--data", str(data), "--scratch", str(scratch)]
    command += ["--memory-bytes", str(memory_bytes)]
    peak_disk = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak_disk
        while not done.is_set():
            peak_disk = max(peak_disk, _disk_bytes(scratch))
            done.wait(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        poller.start()
        out, err = process.communicate()
        done.set()
        poller.join()
    if process.returncode != 0:
        raise SystemExit(f"the child failed with exit code {process.returncode}:\n{out}\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_disk"] = peak_disk
    result["left_on_disk"] = _disk_bytes(scratch)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budget-mb", type=int, default=64, help="UnitRowSource memory_bytes for the spilling run")
    parser.add_argument("--factor", type=float, default=5.0, help="used columns of the dataset / budget")
    parser.add_argument("--rows-per-unit", type=parse_unit_sizes, default=(1, 10), metavar="N|A-B")
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip the in-memory reference run")
    parser.add_argument("--dir", type=Path, default=None, help="write data and scratch here (default: a temp dir)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory-bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.data, args.scratch, args.memory_bytes)
        return

    budget = args.budget_mb * MIB
    rows = int(args.factor * budget) // ROW_BYTES
    with tempfile.TemporaryDirectory(prefix="unit-grouping-", dir=args.dir) as temp:
        data = Path(temp) / "data"
        data.mkdir()
        t0 = time.perf_counter()
        units, on_disk = generate(data, rows, args.rows_per_unit, args.files)
        generated = time.perf_counter() - t0
        configurations = {f"spill (budget {args.budget_mb} MiB)": budget}
        if not args.no_reference:
            configurations["in memory (reference)"] = IN_MEMORY
        results: dict[str, list[dict[str, float]]] = {name: [] for name in configurations}
        load = []
        for _ in range(args.repeats):  # interleaved, so that a burst of load hits both
            for name, memory in configurations.items():
                load.append(os.getloadavg()[0])
                results[name].append(measure(data, Path(temp), memory))

    low, high = args.rows_per_unit
    print(
        f"dataset     {rows:,} rows, {units:,} units of {low}-{high} rows, shuffled over {args.files} Parquet files "
        f"({on_disk / MIB:,.0f} MiB on disk, generated in {generated:.1f} s)"
    )
    print(
        f"used        {rows * ROW_BYTES / MIB:,.0f} MiB of used columns (30 float64 features, int64 label, int64 unit) "
        f"= {rows * ROW_BYTES / budget:.1f}x the {args.budget_mb} MiB grouping budget"
    )
    print(f"runs        median of {args.repeats}, one child each; 1-min load average {min(load):.2f}-{max(load):.2f}")
    for name, runs in results.items():
        first = runs[0]
        median = {key: statistics.median(run[key] for run in runs) for key in ("peak_rss", "start_rss", "peak_disk")}
        timing = {key: statistics.median(run[key] for run in runs) for key in ("prepare_s", "pass_s")}
        print(f"\n{name}: {first['units']:,} units, {first['rows']:,} rows in {first['batches']} batches")
        print(
            f"  peak RSS      {median['peak_rss'] / MIB:,.0f} MiB   "
            f"({median['start_rss'] / MIB:,.0f} MiB before prepare; "
            f"+{(median['peak_rss'] - median['start_rss']) / MIB:,.0f} MiB)   runs: "
            + ", ".join(f"{run['peak_rss'] / MIB:,.0f}" for run in runs)
            + f"   (ru_maxrss {statistics.median(run['maxrss'] for run in runs) / MIB:,.0f} MiB)"
        )
        print(
            f"  in prepare    {statistics.median(run['prepare_peak'] for run in runs) / MIB:,.0f} MiB peak RSS; "
            f"Arrow's pool peaked at {statistics.median(run['arrow_peak'] for run in runs) / MIB:,.0f} MiB allocated"
        )
        print(
            f"  scratch disk  {median['peak_disk'] / MIB:,.0f} MiB at peak   runs: "
            + ", ".join(f"{run['peak_disk'] / MIB:,.0f}" for run in runs)
            + f"   (left after close: {max(run['left_on_disk'] for run in runs):,} bytes)"
        )
        print(
            f"  wall time     prepare {timing['prepare_s']:.1f} s + pass {timing['pass_s']:.1f} s"
            f"   ({first['rows'] / (timing['prepare_s'] + timing['pass_s']):,.0f} rows/s)   runs: "
            + ", ".join(f"{run['prepare_s']:.1f}+{run['pass_s']:.1f}" for run in runs)
        )
    checksums = {run["checksum"] for runs in results.values() for run in runs}
    spilled = {name: {run["spilled"] for run in runs} for name, runs in results.items()}
    print(f"\nsame rows in every run: {max(checksums) - min(checksums) < 1e-6 * max(1.0, abs(max(checksums)))}; "
          f"spilled: " + ", ".join(f"{name} {sorted(flags)}" for name, flags in spilled.items()))  # fmt: skip


if __name__ == "__main__":
    main()
