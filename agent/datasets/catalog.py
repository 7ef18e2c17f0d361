"""The datasets the agent serves: config declarations plus run-time registrations."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import structlog
from structlog.typing import FilteringBoundLogger

from agent.datasets.errors import DatasetRegistryError, DuplicateDatasetError, UnknownDatasetError
from agent.datasets.inspection import DatasetInspection, InspectionCache, inspect_dataset
from agent.datasets.registry import DatasetRegistry
from agent.datasets.spec import DatasetSpec


class DatasetCatalog:
    """Merged view of config and registry datasets.

    The registry is re-read on every call because ``edge-agent dataset
    add|remove`` changes it from another process while the daemon runs. On an
    id clash the config entry wins: the config is the reviewed, read-only
    declaration and must not be shadowed from the command line.

    ``cache`` is optional so that one-shot callers (CLI) inspect directly; the
    daemon passes one so CSV row counts are not recomputed on every RPC, and
    ``report_exposure`` so that config datasets exposing every column are logged once.
    """

    def __init__(
        self,
        config_specs: Sequence[DatasetSpec],
        registry: DatasetRegistry,
        cache: InspectionCache | None = None,
        *,
        logger: FilteringBoundLogger | None = None,
        report_exposure: bool = False,
    ) -> None:
        by_id: dict[str, DatasetSpec] = {}
        for spec in config_specs:
            if spec.id in by_id:
                raise DuplicateDatasetError(
                    spec.id, f"dataset {spec.id!r} is declared more than once in the config"
                )
            by_id[spec.id] = spec
        self._config = by_id
        self._registry = registry
        self._cache = cache
        self._log: FilteringBoundLogger = (
            logger if logger is not None else structlog.get_logger(__name__)
        )
        # Clashes are reported once per id: specs() runs on every RPC and would
        # otherwise flood the log with the same warning.
        self._warned_clashes: set[str] = set()
        self._warned_lock = threading.Lock()
        if report_exposure:
            self._report_exposure()

    def _report_exposure(self) -> None:
        """Warn, once (the daemon asks at start-up), of config datasets that expose every column.

        Kept working for config files written before exposure was explicit, but an
        operator should see that a column added to the files later is exposed too.
        """
        for spec in self._config.values():
            if spec.columns is None:
                self._log.warning(
                    "dataset.all_columns_exposed",
                    dataset_id=spec.id,
                    path=str(spec.path),
                    advice="list the exposed columns in the dataset's `columns` in agent.toml",
                )

    def specs(self) -> list[DatasetSpec]:
        """Every dataset, sorted by id."""
        merged = dict(self._config)
        try:
            registered = self._registry.list(on_invalid=self._skip_invalid)
        except DatasetRegistryError as exc:
            # The configured datasets do not depend on the registry file.
            self._log.error("dataset_registry.unreadable", error=str(exc))
            registered = []
        for spec in registered:
            if spec.id in merged:
                self._warn_clash(spec)
                continue
            merged[spec.id] = spec
        return [merged[dataset_id] for dataset_id in sorted(merged)]

    def _skip_invalid(self, error: DatasetRegistryError) -> None:
        self._log.error("dataset_registry.invalid_entry", error=str(error))

    def get(self, dataset_id: str) -> DatasetSpec:
        """The dataset with this id; raise UnknownDatasetError if there is none."""
        spec = self._config.get(dataset_id)
        if spec is not None:
            # Config datasets stay reachable even if the registry file is damaged.
            return spec
        try:
            spec = self._registry.get(dataset_id)
        except DatasetRegistryError as exc:
            # A damaged entry is not served; the operator sees why in the log.
            self._log.error("dataset_registry.invalid_entry", error=str(exc))
            spec = None
        if spec is None:
            raise UnknownDatasetError(dataset_id)
        return spec

    def inspect(self, dataset_id: str) -> DatasetInspection:
        """Inspection of one dataset; raise UnknownDatasetError if there is none."""
        return self._inspect(self.get(dataset_id))

    def inspect_all(self) -> list[DatasetInspection]:
        """Inspections of every dataset, sorted by id."""
        specs = self.specs()
        if self._cache is not None:
            # Drop entries of datasets removed from the registry since last time.
            self._cache.retain(spec.id for spec in specs)
        return [self._inspect(spec) for spec in specs]

    def _inspect(self, spec: DatasetSpec) -> DatasetInspection:
        if self._cache is None:
            return inspect_dataset(spec)
        return self._cache.inspect(spec)

    def _warn_clash(self, spec: DatasetSpec) -> None:
        with self._warned_lock:
            if spec.id in self._warned_clashes:
                return
            self._warned_clashes.add(spec.id)
        self._log.warning(
            "registry dataset ignored: id already declared in config",
            dataset_id=spec.id,
            registry_path=str(spec.path),
            config_path=str(self._config[spec.id].path),
            registry_file=str(self._registry.path),
        )
