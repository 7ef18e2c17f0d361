"""What a declared dataset is: id, location, format and exposed columns."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from agent.datasets.errors import DatasetSpecError
from agent.datasets.files import list_data_files

RESERVED_COLUMN_PREFIX = "agent::"
"""Column names the agent adds to a dataset's rows while it reads them (agent.runtime.unit_rows):
a privacy-unit column may not start with it."""

# Ids travel in RPCs, audit entries and budget-ledger keys; keeping them short,
# lowercase and free of '/' or spaces avoids quoting and case-folding surprises
# in all of those places.
DATASET_ID_PATTERN: re.Pattern[str] = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class DatasetFormat(enum.Enum):
    """On-disk format of a dataset's files."""

    PARQUET = "parquet"
    ARROW_IPC = "arrow_ipc"
    CSV = "csv"

    @classmethod
    def parse(cls, text: str) -> DatasetFormat:
        """Parse a format name as written by an operator (config or CLI)."""
        fmt = _FORMAT_ALIASES.get(text.strip().lower())
        if fmt is None:
            accepted = ", ".join(sorted(_FORMAT_ALIASES))
            raise DatasetSpecError(f"unknown dataset format {text!r}; accepted: {accepted}")
        return fmt


_FORMAT_ALIASES: dict[str, DatasetFormat] = {
    "parquet": DatasetFormat.PARQUET,
    "arrow_ipc": DatasetFormat.ARROW_IPC,
    "ipc": DatasetFormat.ARROW_IPC,
    "arrow": DatasetFormat.ARROW_IPC,
    "feather": DatasetFormat.ARROW_IPC,
    "csv": DatasetFormat.CSV,
}


class DatasetSource(enum.Enum):
    """Where a dataset was declared; registry entries can be removed by the CLI."""

    CONFIG = "config"
    REGISTRY = "registry"


def validate_dataset_id(text: str) -> str:
    """Return ``text`` if it is a valid dataset id, else raise DatasetSpecError."""
    if DATASET_ID_PATTERN.fullmatch(text) is None:
        raise DatasetSpecError(
            f"invalid dataset id {text!r}: use 1 to 64 characters among lowercase letters, "
            "digits, '.', '_' and '-', starting with a letter or a digit"
        )
    return text


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset the agent may compute on.

    ``columns`` is an allow-list of the columns exposed to packages and
    coordinators; None exposes every column of the files except the unit
    column (kept for config files that predate explicit exposure; the CLI
    asks for ``--columns`` or ``--all-columns``).

    ``privacy_unit`` names the column whose value identifies the person a row
    belongs to (e.g. ``patient_id``): the unit that differential privacy
    protects. None: each row is its own unit. The unit column is read by the
    agent only (to group and sample rows by unit) and is never exposed: it may
    not be in ``columns``.
    """

    id: str
    path: Path
    format: DatasetFormat
    description: str = ""
    columns: tuple[str, ...] | None = None
    source: DatasetSource = DatasetSource.CONFIG
    privacy_unit: str | None = None

    def __post_init__(self) -> None:
        validate_dataset_id(self.id)
        if self.privacy_unit is not None and (not isinstance(self.privacy_unit, str) or not self.privacy_unit):
            raise DatasetSpecError(
                f"dataset {self.id!r}: privacy_unit must be a non-empty column name, got {self.privacy_unit!r}"
            )
        if self.privacy_unit is not None and self.privacy_unit.startswith(RESERVED_COLUMN_PREFIX):
            # The grouping adds columns of its own under this prefix beside the unit's.
            raise DatasetSpecError(
                f"dataset {self.id!r}: privacy_unit {self.privacy_unit!r}: column names starting with "
                f"{RESERVED_COLUMN_PREFIX!r} are the agent's own; rename the column in the source"
            )
        if not self.path.is_absolute():
            # A relative path would resolve against whatever directory the
            # daemon or the CLI happens to run in, so the two could disagree.
            raise DatasetSpecError(f"dataset {self.id!r}: path {self.path} must be absolute")
        if self.columns is not None:
            # Coerce a list into a tuple so the spec stays hashable: the
            # inspection cache uses it as part of its key.
            columns = tuple(self.columns)
            object.__setattr__(self, "columns", columns)
            if not columns:
                raise DatasetSpecError(
                    f"dataset {self.id!r}: the column allow-list is empty; "
                    "omit it to expose every column"
                )
            for name in columns:
                if not isinstance(name, str) or not name:
                    raise DatasetSpecError(
                        f"dataset {self.id!r}: column names must be non-empty strings, "
                        f"got {name!r}"
                    )
            duplicates = sorted({name for name in columns if columns.count(name) > 1})
            if duplicates:
                raise DatasetSpecError(
                    f"dataset {self.id!r}: column(s) listed more than once: "
                    + ", ".join(duplicates)
                )
            if self.privacy_unit is not None and self.privacy_unit in columns:
                # The unit column identifies a person: exposing it would hand
                # coordinators the very link that unit-level privacy protects.
                raise DatasetSpecError(
                    f"dataset {self.id!r}: column {self.privacy_unit!r} is the privacy unit and can never "
                    "be exposed; remove it from the exposed columns"
                )


# Compressed CSV is listed because pyarrow picks the decompression codec from
# the file extension, so such files open like plain CSV.
_SUFFIX_FORMATS: dict[str, DatasetFormat] = {
    ".parquet": DatasetFormat.PARQUET,
    ".pq": DatasetFormat.PARQUET,
    ".arrow": DatasetFormat.ARROW_IPC,
    ".feather": DatasetFormat.ARROW_IPC,
    ".ipc": DatasetFormat.ARROW_IPC,
    ".csv": DatasetFormat.CSV,
    ".csv.gz": DatasetFormat.CSV,
    ".csv.bz2": DatasetFormat.CSV,
    ".csv.zst": DatasetFormat.CSV,
}


def format_from_name(name: str) -> DatasetFormat | None:
    """Format implied by a file name's suffix, or None if it implies none."""
    lowered = name.lower()
    for suffix, fmt in _SUFFIX_FORMATS.items():
        if lowered.endswith(suffix):
            return fmt
    return None


def guess_format(path: Path) -> DatasetFormat:
    """Guess a dataset's format from file suffixes.

    A directory is judged by the data files inside it (recursively, hidden and
    ``_``-prefixed entries ignored); files without a known suffix are skipped
    so that e.g. a README does not get in the way, but files of two different
    formats are refused rather than silently picking one.
    """
    if not path.is_dir():
        fmt = format_from_name(path.name)
        if fmt is None:
            raise DatasetSpecError(
                f"cannot tell the format of {path} from its suffix; "
                f"known suffixes: {', '.join(_SUFFIX_FORMATS)}"
            )
        return fmt

    try:
        files = list_data_files(path)
    except OSError as exc:
        raise DatasetSpecError(f"cannot tell the format of {path}: {exc}") from exc
    found = {fmt for fmt in (format_from_name(f.name) for f in files) if fmt is not None}
    if not found:
        raise DatasetSpecError(
            f"cannot tell the format of directory {path}: it holds no file with a known "
            f"suffix ({', '.join(_SUFFIX_FORMATS)})"
        )
    if len(found) > 1:
        names = ", ".join(sorted(fmt.value for fmt in found))
        raise DatasetSpecError(f"directory {path} mixes several formats: {names}")
    return found.pop()
