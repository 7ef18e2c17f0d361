"""Dataset catalog: the local Arrow datasets the agent may compute on.

Datasets never leave the hospital; this package only describes them (schema,
availability, coarse size) and opens them for the task runner.
"""

from agent.datasets.catalog import DatasetCatalog
from agent.datasets.errors import (
    DatasetError,
    DatasetRegistryError,
    DatasetSpecError,
    DatasetUnavailableError,
    DuplicateDatasetError,
    UnknownDatasetError,
)
from agent.datasets.files import DataFile, list_data_files, scan_data_files
from agent.datasets.identifiers import identifier_like, looks_like_identifier
from agent.datasets.inspection import (
    ColumnInfo,
    DatasetInspection,
    InspectionCache,
    inspect_dataset,
    open_dataset,
    row_count_bucket,
    unit_type_supported,
)
from agent.datasets.registry import DatasetRegistry
from agent.datasets.spec import (
    DATASET_ID_PATTERN,
    DatasetFormat,
    DatasetSource,
    DatasetSpec,
    format_from_name,
    guess_format,
    validate_dataset_id,
)

__all__ = [
    "DATASET_ID_PATTERN",
    "ColumnInfo",
    "DataFile",
    "DatasetCatalog",
    "DatasetError",
    "DatasetFormat",
    "DatasetInspection",
    "DatasetRegistry",
    "DatasetRegistryError",
    "DatasetSource",
    "DatasetSpec",
    "DatasetSpecError",
    "DatasetUnavailableError",
    "DuplicateDatasetError",
    "InspectionCache",
    "UnknownDatasetError",
    "format_from_name",
    "guess_format",
    "identifier_like",
    "inspect_dataset",
    "list_data_files",
    "looks_like_identifier",
    "open_dataset",
    "row_count_bucket",
    "scan_data_files",
    "unit_type_supported",
    "validate_dataset_id",
]
