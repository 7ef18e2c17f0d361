"""`edge-agent dataset add|list|show|remove`: the hospital's dataset catalog."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli.exit_codes import ExitCode
from agent.cli.settings import add_config_arguments, resolve_config
from agent.config import AgentConfig
from agent.datasets import (
    DatasetCatalog,
    DatasetFormat,
    DatasetInspection,
    DatasetRegistry,
    DatasetSource,
    DatasetSpec,
    DatasetSpecError,
    DuplicateDatasetError,
    guess_format,
    inspect_dataset,
    validate_dataset_id,
)


class DatasetCommandError(Exception):
    """A dataset command cannot do what was asked; the message says why."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dataset", help="register and inspect local datasets", description="Register and inspect local datasets."
    )
    commands = parser.add_subparsers(dest="dataset_command", required=True, metavar="COMMAND")

    add = commands.add_parser(
        "add",
        help="register a dataset",
        description="Register a Parquet, Arrow IPC/Feather or CSV dataset (a file or a directory). "
        "The files are checked now and read in place later; they are never copied.",
    )
    add.add_argument("dataset_id", metavar="ID", help="lowercase id, e.g. oncology-2024")
    add.add_argument("path", type=Path, help="file or directory holding the data")
    add.add_argument(
        "--format", default=None, help="parquet, arrow_ipc (feather) or csv (default: from the file names)"
    )
    add.add_argument("--description", default="", help="what the dataset holds, shown to coordinators")
    add.add_argument(
        "--columns",
        default=None,
        help="comma-separated allow-list of columns coordinators may see and use (default: all)",
    )
    add_config_arguments(add)
    add.set_defaults(handler=run_add)

    listing = commands.add_parser(
        "list", help="list datasets", description="List datasets and whether they are readable."
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_config_arguments(listing)
    listing.set_defaults(handler=run_list)

    show = commands.add_parser("show", help="show a dataset's schema and status", description="Show one dataset.")
    show.add_argument("dataset_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_config_arguments(show)
    show.set_defaults(handler=run_show)

    remove = commands.add_parser(
        "remove",
        help="unregister a dataset (the files are left alone)",
        description="Unregister a dataset added with `dataset add`. The data files are not touched. "
        "Datasets declared in the config file are removed by editing that file.",
    )
    remove.add_argument("dataset_id", metavar="ID")
    add_config_arguments(remove)
    remove.set_defaults(handler=run_remove)


def _catalog(config: AgentConfig) -> tuple[DatasetCatalog, DatasetRegistry]:
    registry = DatasetRegistry(config.dataset_registry_file)
    return DatasetCatalog(config.datasets, registry), registry


def _parse_columns(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    columns = tuple(part.strip() for part in text.split(","))
    if not all(columns):
        raise DatasetSpecError(f"--columns: empty column name in {text!r}")
    if len(set(columns)) != len(columns):
        raise DatasetSpecError(f"--columns: a column is listed twice in {text!r}")
    return columns


def run_add(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    dataset_id = validate_dataset_id(args.dataset_id)
    path = args.path.expanduser().resolve()
    if not path.exists():
        raise DatasetCommandError(f"{path}: no such file or directory")
    fmt = DatasetFormat.parse(args.format) if args.format else guess_format(path)
    spec = DatasetSpec(
        id=dataset_id,
        path=path,
        format=fmt,
        description=args.description,
        columns=_parse_columns(args.columns),
        source=DatasetSource.REGISTRY,
    )
    if any(declared.id == dataset_id for declared in config.datasets):
        raise DuplicateDatasetError(dataset_id, f"dataset {dataset_id!r} is already declared in {config.source}")
    # Refuse now rather than register something every coordinator would see as broken.
    inspection = inspect_dataset(spec)
    if not inspection.available:
        raise DatasetCommandError(f"dataset {dataset_id!r} not added: {inspection.reason}")
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    DatasetRegistry(config.dataset_registry_file).add(spec)
    print(
        f"added dataset {dataset_id!r}: {fmt.value}, {inspection.row_count} rows, "
        f"{len(inspection.columns)} columns exposed"
    )
    return ExitCode.SUCCESS


def _as_dict(inspection: DatasetInspection) -> dict[str, object]:
    spec = inspection.spec
    return {
        "id": spec.id,
        "description": spec.description,
        "format": spec.format.value,
        "path": str(spec.path),
        "source": spec.source.value,
        "available": inspection.available,
        "reason": inspection.reason,
        "row_count": inspection.row_count,
        "columns": [{"name": c.name, "arrow_type": c.arrow_type, "nullable": c.nullable} for c in inspection.columns],
        "exposed_columns": list(spec.columns) if spec.columns is not None else None,
    }


def run_list(args: argparse.Namespace) -> int:
    catalog, _ = _catalog(resolve_config(args))
    inspections = catalog.inspect_all()
    if args.json:
        print(json.dumps([_as_dict(i) for i in inspections], indent=2))
        return ExitCode.SUCCESS
    if not inspections:
        print("no datasets (add one with `edge-agent dataset add ID PATH`)")
        return ExitCode.SUCCESS
    rows = [("ID", "FORMAT", "SOURCE", "STATUS", "ROWS", "COLUMNS", "PATH")]
    for i in inspections:
        rows.append(
            (
                i.spec.id,
                i.spec.format.value,
                i.spec.source.value,
                "available" if i.available else "UNAVAILABLE",
                "-" if i.row_count is None else str(i.row_count),
                str(len(i.columns)) if i.available else "-",
                str(i.spec.path),
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for i in inspections:
        if not i.available:
            print(f"{i.spec.id}: {i.reason}", file=sys.stderr)
    return ExitCode.SUCCESS


def run_show(args: argparse.Namespace) -> int:
    catalog, _ = _catalog(resolve_config(args))
    inspection = catalog.inspect(args.dataset_id)
    if args.json:
        print(json.dumps(_as_dict(inspection), indent=2))
        return ExitCode.SUCCESS if inspection.available else ExitCode.FAILURE
    spec = inspection.spec
    print(f"id:          {spec.id}")
    print(f"description: {spec.description}")
    print(f"format:      {spec.format.value}")
    print(f"path:        {spec.path}")
    print(f"source:      {spec.source.value}")
    print(f"status:      {'available' if inspection.available else 'UNAVAILABLE: ' + inspection.reason}")
    if inspection.available:
        print(f"rows:        {inspection.row_count}")
        exposure = "all columns" if spec.columns is None else "allow-list"
        print(f"columns ({len(inspection.columns)}, {exposure}):")
        width = max((len(c.name) for c in inspection.columns), default=0)
        for column in inspection.columns:
            nullable = "" if column.nullable else "  not null"
            print(f"  {column.name.ljust(width)}  {column.arrow_type}{nullable}")
    return ExitCode.SUCCESS if inspection.available else ExitCode.FAILURE


def run_remove(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if any(declared.id == args.dataset_id for declared in config.datasets):
        raise DatasetCommandError(
            f"dataset {args.dataset_id!r} is declared in {config.source}; remove it from that file instead"
        )
    DatasetRegistry(config.dataset_registry_file).remove(args.dataset_id)
    print(f"removed dataset {args.dataset_id!r} (its files were not touched)")
    return ExitCode.SUCCESS
