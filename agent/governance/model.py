"""The policy as typed, validated values (built by governance.loader)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# The dataset rule that applies to catalog datasets without a rule of their
# own. Meant for development instances; a production policy names datasets.
ANY_DATASET = "*"

# max_rows_per_unit: the default, and the range the policy file may set.
DEFAULT_MAX_ROWS_PER_UNIT = 64
MAX_ROWS_PER_UNIT_RANGE = (1, 10_000)
# min_cell_size: the default (as the usual disclosure-control rule of five), and the range.
DEFAULT_MIN_CELL_SIZE = 5
MIN_CELL_SIZE_RANGE = (0, 1_000_000)


@dataclass(frozen=True)
class Bounds:
    """An inclusive range; None leaves that side open."""

    minimum: float | None = None
    maximum: float | None = None

    def contains(self, value: float) -> bool:
        return (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)

    def describe(self) -> str:
        low = "-inf" if self.minimum is None else f"{self.minimum:g}"
        high = "inf" if self.maximum is None else f"{self.maximum:g}"
        return f"[{low}, {high}]"


@dataclass(frozen=True)
class CoordinatorRule:
    identity: str
    # Dataset ids, or ANY_DATASET for every dataset that has a policy rule.
    datasets: frozenset[str]
    # Names of the task kinds it may run (agent.tasks.kinds.registry).
    task_kinds: frozenset[str]
    max_tasks_per_hour: int | None = None
    max_tasks_per_day: int | None = None
    valid_from: dt.datetime | None = None
    valid_until: dt.datetime | None = None


@dataclass(frozen=True)
class DatasetRule:
    dataset_id: str
    # Columns coordinators may see and packages may use; None = all that are
    # not forbidden.
    exposed_columns: frozenset[str] | None
    # Direct identifiers: never exposed, never usable, whatever else says.
    forbidden_columns: frozenset[str]
    # Columns a package may use as label, survival time or event indicator.
    label_columns: frozenset[str] | None
    min_cohort_size: int
    epsilon_budget: float
    delta: float
    budget_group: str
    # Purposes of use allowed by the data-use agreement; empty = not restricted.
    purposes: frozenset[str]
    agreement_expires: dt.date | None
    # The range of each hyperparameter, by name ([datasets.bounds.<name>]); one not named
    # here is held to its declared default (agent.tasks.kinds.hyperparameters).
    bounds: Mapping[str, Bounds] = field(default_factory=dict)
    # Tasks only on datasets that declare a privacy unit (a patient column): without
    # one every row counts as a person, and a patient with k rows is protected at
    # about k times the ε the ledger states.
    require_privacy_unit: bool = False
    # The most rows of one unit a task reads (the agent picks which, at random): bounds
    # how far one patient's many rows can steer a unit's clipped contribution, and the work.
    max_rows_per_unit: int = DEFAULT_MAX_ROWS_PER_UNIT
    # A statistics task withholds each released count (and each stratum) whose *noisy*
    # value is below this, in addition to the noise (0: none withheld).
    min_cell_size: int = DEFAULT_MIN_CELL_SIZE

    def column_visible(self, name: str) -> bool:
        if name in self.forbidden_columns:
            return False
        return self.exposed_columns is None or name in self.exposed_columns


@dataclass(frozen=True)
class PublisherRule:
    name: str
    # "SHA256:..." fingerprint of the raw Ed25519 public key.
    key_id: str
    public_key: bytes
    expires: dt.datetime | None = None
    revoked: bool = False
    # Manifest publishers this key may sign for; None = any.
    namespaces: frozenset[str] | None = None


@dataclass(frozen=True)
class ReviewerRule:
    """A compliance officer whose signed package decisions the agent honours."""

    name: str
    # "SHA256:..." fingerprint of the raw Ed25519 public key.
    key_id: str
    public_key: bytes


@dataclass(frozen=True)
class PackageRules:
    require_approval: bool = True
    # Glob patterns over package names (fnmatch); empty = any name.
    allowed_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    max_concurrent_tasks: int = 2
    task_memory_mb: int = 4096
    task_seconds: int = 3600
    # Distinct (sampling rate, noise multiplier) pairs one budget group may be charged
    # with: each is composed on every reservation, so an unbounded number would let a
    # coordinator make accounting arbitrarily slow.
    max_accounting_settings: int = 64


@dataclass(frozen=True)
class Policy:
    coordinators: Mapping[str, CoordinatorRule]
    datasets: Mapping[str, DatasetRule]
    publishers: tuple[PublisherRule, ...] = ()
    # Whose signed approvals and rejections count when packages.require_approval is set.
    reviewers: tuple[ReviewerRule, ...] = ()
    packages: PackageRules = PackageRules()
    limits: Limits = Limits()
    # sha256 of the policy file's bytes: audit entries name the policy in force.
    digest: str = ""
    source: str = ""

    def dataset_rule(self, dataset_id: str) -> DatasetRule | None:
        rule = self.datasets.get(dataset_id)
        if rule is not None:
            return rule
        default = self.datasets.get(ANY_DATASET)
        if default is None:
            return None
        # The wildcard's budget group defaults to one group per dataset, not
        # one shared by every dataset.
        group = dataset_id if default.budget_group == ANY_DATASET else default.budget_group
        return replace(default, dataset_id=dataset_id, budget_group=group)
