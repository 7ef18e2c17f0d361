"""What a federated run did, round by round and site by site: the run report's values.

Everything here is what the coordinator saw: noisy aggregates and the ε the
agents said they charged. The agents' own ledgers and audit logs remain the
authority; the report quotes each agent's GetBudget at the end of the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.durable import write_public
from edge_sponsor.coordinator.client import Units


@dataclass(frozen=True)
class SiteTask:
    """One site's task in one round: ``status`` is ``ok`` or a gRPC status name."""

    site: str
    kind: str
    status: str
    seconds: float
    # This task's share of the budget group's ε, as the agent reported it.
    epsilon_charged: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class RoundRecord:
    round: int
    seconds: float
    # True when at least `quorum` sites returned an update and the model moved.
    updated: bool
    training: tuple[SiteTask, ...]
    evaluation: tuple[SiteTask, ...] = ()
    # Federated evaluation: sum of noisy metric sums over sum of noisy counts.
    metrics: Mapping[str, float] = field(default_factory=dict)
    site_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # The standard deviation of each pooled metric's DP noise (delta method over the sites'
    # noisy sums and counts, whose noise the coordinator knows): a metric is never shown
    # without it, as if it were exact.
    metrics_noise_sd: Mapping[str, float] = field(default_factory=dict)
    # A package's score histogram (edge_sponsor.coordinator.score_evaluation): the sites'
    # noisy cells added, by metric name, and the noise SD of one pooled cell; the run page
    # draws the ROC curve and the calibration from them.
    score_cells: Mapping[str, float] = field(default_factory=dict)
    score_cell_sd: float = 0.0
    # With [training] evaluation_release_dropped_units: each site's noisy count of the patients
    # (rows, without a unit column) who lost a row to a missing value, and its noise SD (σ).
    dropped_units: Mapping[str, float] = field(default_factory=dict)
    dropped_units_sd: float = 0.0

    @property
    def missing_sites(self) -> tuple[str, ...]:
        return tuple(task.site for task in self.training if task.status != "ok")


@dataclass(frozen=True)
class SiteSummary:
    site: str
    address: str
    dataset: str
    agent_id: str = ""
    # "ok", or why the site took no part ("unreachable", "refused: ...").
    status: str = "ok"
    rounds_contributed: int = 0
    # From the agent's GetBudget before and after the run (None if it could not be asked).
    # Their difference is what the run added, exactly so if nobody else used the budget meanwhile.
    epsilon_spent_before: float | None = None
    # The sum of the run's task shares, as the agent reported them per task.
    epsilon_charged_by_run: float = 0.0
    # The budget group's ε after the site's last task in this run, as its agent reported it
    # (a lower bound of what it has spent when the final GetBudget could not be asked).
    epsilon_last_reported: float = 0.0
    budget_group: str = ""
    epsilon_spent: float | None = None
    epsilon_limit: float | None = None
    delta: float | None = None
    accountant: str = ""
    # From the same GetBudget: what the site's ε protects ("patient" where its dataset declares a
    # privacy unit, "row" where it does not; "" when not read) and its units, bucketed as [lower, upper).
    epsilon_per: str = ""
    units_lower: int | None = None
    units_upper: int | None = None

    @property
    def units_described(self) -> str:
        """What the site's ε protects, in words (the unit and the units' bucket)."""
        if not self.epsilon_per:
            return "what ε is counted per was not reported"
        return Units(self.epsilon_per == "patient", self.units_lower, self.units_upper).describe()

    @property
    def epsilon_added(self) -> float | None:
        if self.epsilon_spent is None or self.epsilon_spent_before is None:
            return None
        return self.epsilon_spent - self.epsilon_spent_before


@dataclass(frozen=True)
class RunReport:
    federation: str
    run_id: str
    algorithm: str
    package_name: str
    package_digest: str
    started_at: str
    finished_at: str
    plan: Mapping[str, Any]
    rounds: tuple[RoundRecord, ...]
    sites: tuple[SiteSummary, ...]
    model_file: str = ""
    # Anything the caller measured on top (the demo adds held-out scores).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for record, raw in zip(self.rounds, data["rounds"], strict=True):
            raw["missing_sites"] = list(record.missing_sites)
        for site, raw in zip(self.sites, data["sites"], strict=True):
            raw["epsilon_added"] = site.epsilon_added
            raw["units_described"] = site.units_described
        return data

    def write(self, path: Path) -> None:
        text = json.dumps(self.to_json(), indent=2, sort_keys=False, allow_nan=False) + "\n"
        write_public(path, text.encode())
