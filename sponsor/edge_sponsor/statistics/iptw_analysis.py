"""A propensity-weighted study's record (``study iptw``), as the report and its JSON show it."""

from __future__ import annotations

from dataclasses import dataclass

from edge_sponsor.statistics.cox_analysis import CoxAnalysis
from edge_sponsor.statistics.glm import GlmAnalysis
from edge_sponsor.statistics.iptw import Balance, WeightedSurvival


@dataclass(frozen=True)
class StageSite:
    """One site in a one-task stage (the weighted description or survival): ok, or why not."""

    site: str
    status: str
    detail: str = ""
    epsilon_charged: float = 0.0
    budget_epsilon_spent: float = 0.0


@dataclass(frozen=True)
class IptwAnalysis:
    """A whole weighted study: the propensity model's fit, the balance before and after
    weighting, the weighted survival curves per arm and the weighted Cox model, with what each
    stage cost each site. A stage that could not run is None and :attr:`stopped` says why."""

    treatment: str
    arms: tuple[str, str]
    """The control's and the treated arm's category labels."""
    estimand: str
    max_weight: float
    noise_multiplier: float
    """σ of the propensity model's and the Cox model's tasks."""
    balance_noise_multiplier: float
    survival_noise_multiplier: float
    propensity: GlmAnalysis
    propensity_coefficients: tuple[float, ...]
    """What every weighted task was sent (the propensity model's design scale)."""
    balance: Balance | None = None
    balance_sites: tuple[StageSite, ...] = ()
    survival: WeightedSurvival | None = None
    survival_sites: tuple[StageSite, ...] = ()
    cox: CoxAnalysis | None = None
    stopped: str = ""
    """Why the study ended before its last stage, or ""."""
