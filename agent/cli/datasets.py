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
    identifier_like,
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
        help="comma-separated allow-list of the columns coordinators may see and packages may read; "
        "with --all-columns: the identifier-like columns to expose as well",
    )
    add.add_argument(
        "--all-columns",
        action="store_true",
        help="expose every column the files have now, except the privacy unit and the columns that look "
        "like identifiers (name those in --columns to expose them); columns added to the files later "
        "are not exposed",
    )
    add.add_argument(
        "--privacy-unit",
        default=None,
        metavar="COLUMN",
        help="column naming the person each row belongs to (e.g. patient_id): privacy is then per person, "
        "however many rows a person has. Never exposed. Without it each row counts as one person",
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
    if any(declared.id == dataset_id for declared in config.datasets):
        raise DuplicateDatasetError(dataset_id, f"dataset {dataset_id!r} is already declared in {config.source}")
    unit = args.privacy_unit.strip() if args.privacy_unit is not None else None
    if unit == "":
        raise DatasetSpecError("--privacy-unit: empty column name")
    named = _parse_columns(args.columns)
    # Everything the files hold but the unit column (and the checks of the unit column itself).
    whole = inspect_dataset(
        DatasetSpec(id=dataset_id, path=path, format=fmt, source=DatasetSource.REGISTRY, privacy_unit=unit)
    )
    if not whole.available:
        # Refuse now rather than register something every coordinator would see as broken.
        raise DatasetCommandError(f"dataset {dataset_id!r} not added: {whole.reason}")
    columns = _exposed_columns(dataset_id, whole, named, all_columns=args.all_columns, unit=unit)
    spec = DatasetSpec(
        id=dataset_id,
        path=path,
        format=fmt,
        description=args.description,
        columns=columns,
        source=DatasetSource.REGISTRY,
        privacy_unit=unit,
    )
    inspection = inspect_dataset(spec)
    if not inspection.available:
        raise DatasetCommandError(f"dataset {dataset_id!r} not added: {inspection.reason}")
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    DatasetRegistry(config.dataset_registry_file).add(spec)
    print(
        f"added dataset {dataset_id!r}: {fmt.value}, {inspection.row_count} rows, "
        f"{len(inspection.columns)} columns exposed"
    )
    print(_unit_line(inspection))
    _warn_identifiers(inspection)
    return ExitCode.SUCCESS


def _exposed_columns(
    dataset_id: str,
    whole: DatasetInspection,
    named: tuple[str, ...] | None,
    *,
    all_columns: bool,
    unit: str | None,
) -> tuple[str, ...]:
    """The allow-list to register: named columns, or (--all-columns) every column now in the files.

    Always an explicit list, so that a column added to the files later is not exposed
    without the operator saying so.
    """
    available = [c.name for c in whole.columns]
    if unit is not None and named is not None and unit in named:
        raise DatasetSpecError(
            f"--columns: {unit!r} is the privacy unit (--privacy-unit) and can never be exposed; "
            "remove it from --columns"
        )
    if not all_columns:
        if named is None:
            flagged = identifier_like(available)
            hint = f"; these look like identifiers: {', '.join(flagged)}" if flagged else ""
            raise DatasetCommandError(
                f"dataset {dataset_id!r} not added: say which columns coordinators may see and packages may "
                f"read, with --columns a,b,... (or --all-columns). The columns of {whole.spec.path} are: "
                f"{', '.join(available)}{hint}"
            )
        return named
    acknowledged = set(named or ())
    unknown = sorted(acknowledged - set(available))
    if unknown:
        raise DatasetSpecError(f"--columns: not a column of {whole.spec.path}: {', '.join(unknown)}")
    held_back = [name for name in identifier_like(available) if name not in acknowledged]
    exposed = tuple(name for name in available if name not in held_back)
    if held_back:
        print(
            "not exposed (they look like identifiers; name them in --columns to expose them): "
            + ", ".join(held_back)
        )
    if not exposed:
        raise DatasetCommandError(
            f"dataset {dataset_id!r} not added: every column of {whole.spec.path} looks like an identifier; "
            "name the columns to expose with --columns"
        )
    return exposed


def _unit_line(inspection: DatasetInspection) -> str:
    unit = inspection.spec.privacy_unit
    if unit is None:
        return (
            "privacy unit: none declared: each row counts as one person, so a person with several rows is "
            "protected less (declare one with `edge-agent dataset add ... --privacy-unit COLUMN`)"
        )
    count = "" if inspection.unit_count is None else f", {inspection.unit_count} units"
    return f"privacy unit: {unit} (never exposed{count})"


def _warn_identifiers(inspection: DatasetInspection) -> None:
    flagged = identifier_like(c.name for c in inspection.columns)
    if flagged:
        print(
            f"warning: dataset {inspection.spec.id!r} exposes columns that look like identifiers: "
            f"{', '.join(flagged)}",
            file=sys.stderr,
        )


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
        "privacy_unit": spec.privacy_unit,
        "unit_count": inspection.unit_count,
        "columns": [{"name": c.name, "arrow_type": c.arrow_type, "nullable": c.nullable} for c in inspection.columns],
        "exposed_columns": list(spec.columns) if spec.columns is not None else None,
        "identifier_like_columns": list(identifier_like(c.name for c in inspection.columns)),
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
    rows = [("ID", "FORMAT", "SOURCE", "STATUS", "ROWS", "UNITS", "COLUMNS", "PATH")]
    for i in inspections:
        rows.append(
            (
                i.spec.id,
                i.spec.format.value,
                i.spec.source.value,
                "available" if i.available else "UNAVAILABLE",
                "-" if i.row_count is None else str(i.row_count),
                # Rows stand for units where none is declared; "=rows" says so.
                "-" if i.units is None else (str(i.units) if i.spec.privacy_unit else "=rows"),
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
        print(_unit_line(inspection))
        if spec.columns is None:
            exposure = "ALL columns of the files are exposed (no column list declared)"
        else:
            exposure = "allow-list"
        print(f"columns ({len(inspection.columns)}, {exposure}):")
        width = max((len(c.name) for c in inspection.columns), default=0)
        for column in inspection.columns:
            nullable = "" if column.nullable else "  not null"
            print(f"  {column.name.ljust(width)}  {column.arrow_type}{nullable}")
        _warn_identifiers(inspection)
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
