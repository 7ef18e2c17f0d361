"""A Cox run's record, as the report and its JSON show it: the fit, the rounds, each site's charges."""

from __future__ import annotations

from dataclasses import dataclass

from edge_sponsor.statistics.cox import CoxFit
from edge_sponsor.statistics.glm import GlmSite


@dataclass(frozen=True)
class CoxRound:
    """One round of a Cox run, as the report lists it."""

    index: int
    sites: tuple[str, ...]
    included: float
    """Patients in the model, noisy, summed over the round's sites."""
    coefficients: tuple[float, ...]
    """The log hazard ratios after the round's step (design scale)."""


@dataclass(frozen=True)
class CoxAnalysis:
    """A whole Cox run: the fit (None when no round was completed), its rounds and each site's charges."""

    fit: CoxFit | None
    rounds: tuple[CoxRound, ...]
    sites: tuple[GlmSite, ...]
    noise_multiplier: float
    rounds_planned: int
    stopped_early: str = ""
    not_converged: str = ""
