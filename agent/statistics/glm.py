"""The plan's regression models: who is included, the score and the information (``dp_glm``,
and ``dp_propensity``'s propensity model).

A ``dp_glm`` task sends the current coefficients β; the agent returns, with Gaussian noise,
the logistic log-likelihood's score ``Σ x_i (y_i - μ_i)`` and Fisher information
``Σ μ_i (1 - μ_i) x_i x_iᵀ`` (``μ_i = sigmoid(x_i · β)``) over its included patients, and how
many patients it included and excluded. The coordinator adds the sites' sums and takes a
Newton-Raphson step. ``x_i`` is the patient's design row (:mod:`agent.statistics.design`).
On a weighted plan each patient's terms are multiplied by their weight
(:mod:`agent.statistics.weighting`), and ``dp_propensity`` releases the same sums for the
propensity model, whose outcome is the treatment arm.

**Included** patients have every covariate present (a numeric value that is not null or
NaN, infinite values being clamped like any other; a categorical value among the declared
categories) and an outcome of exactly 0 or 1 (false or true). Any other patient is
excluded: counted, and nothing else. Whether a patient is included depends on their own
row only, so adding or removing one moves one count by one and the sums by one row's
contribution, which :func:`agent.packages.release_layout.model_blocks` bounds.

The sums are taken over chunks of rows, so that a million patients need a few MiB of
design rows at a time, not ``patients x p`` floats.

**A Cox model** (:attr:`ModelFamily.COX`) is fitted as a piecewise-exponential model on the
plan's survival grid ``0 = t_0 < t_1 < … < t_J``, which is Cox's proportional hazards with a
baseline hazard constant on each interval: a Poisson log-likelihood
``Σ_i Σ_j d_ij (α_j + x_i·β) - E_ij exp(α_j + x_i·β)``, a sum over patients, unlike Cox's
partial likelihood, whose risk sets tie every patient's term to the others'. Here ``x_i``
is the covariate row (no intercept: the baselines ``α`` take its place), ``E_ij`` the time
patient ``i`` spent in interval ``j`` (follow-up ends at ``t_J``) and ``d_ij`` 1 in the
interval of their event. The task sends ``(α, β)`` and the agent releases the score and
information of that likelihood with each patient's expected events
``μ_ij = E_ij exp(α_j + x_i·β)`` scaled down together, where they add up to more than the
public cap ``Λ``, to add up to ``Λ``: that bounds what one patient moves
(:func:`agent.packages.release_layout.cox_blocks`), and the count of clamped patients says
how many it touched. A Cox patient is included when every covariate is present, the time
is a number at least 0 (not NaN) and the event is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.packages.plan import AnalysisPlan, ModelFamily, ModelSpec
from agent.packages.release_layout import (
    GLM_BASELINE_CROSS,
    GLM_BASELINE_INFORMATION,
    GLM_BASELINE_SCORE,
    GLM_COUNT,
    GLM_INFORMATION,
    GLM_SCORE,
)
from agent.statistics.design import (
    CHUNK_ROWS,
    checked_coefficients,
    covariate_rows,
    covariates_present,
    design_rows,
)
from agent.statistics.patients import PatientTable
from agent.statistics.weighting import checked_weights, treatment_arm

Floats = npt.NDArray[np.float64]
Flags = npt.NDArray[np.bool_]


def included(
    model: ModelSpec, patients: PatientTable, *, outcome: Floats | None = None, weights: Floats | None = None
) -> Flags:
    """Which of ``patients`` the regression uses: every covariate present, and the outcome 0 or 1
    (logistic: ``outcome``, by default the table's) or a survival time at least 0 and a known
    event (Cox); on a weighted plan, also a weight (``weights`` not NaN)."""
    if model.family is ModelFamily.COX:
        if patients.time is None or patients.event is None:
            raise ValueError("the patient table was built without the plan's survival outcome")
        # NaN compares false: a missing time excludes; a missing event is NaN as well.
        keep: Flags = (patients.time >= 0.0) & ~np.isnan(patients.event)
    else:
        y = patients.outcome if outcome is None else outcome
        if y is None:
            raise ValueError("the patient table was built without the model's outcome")
        keep = (y == 0.0) | (y == 1.0)  # NaN equals neither: a missing outcome excludes
    keep &= covariates_present(model, patients)
    if weights is not None:
        keep &= ~np.isnan(weights)
    return keep


@dataclass(frozen=True, eq=False)
class ModelSums:
    """The exact sums of one task, before noise."""

    included: int
    excluded: int
    score: Floats
    """``[p]``: Σ x (y - μ) over the included patients."""
    information: Floats
    """``[p, p]``: Σ μ (1 - μ) x xᵀ over the included patients (symmetric)."""


def model_sums(
    model: ModelSpec,
    patients: PatientTable,
    coefficients: npt.ArrayLike,
    *,
    outcome: Floats | None = None,
    weights: Floats | None = None,
) -> ModelSums:
    """The score and information at ``coefficients`` (β, ``[model.width]``, finite) over the
    included patients of ``patients``; ValueError for coefficients of another shape or not finite.

    ``outcome`` replaces the table's (the propensity model's is the treatment arm); with
    ``weights`` (each at most the plan's cap, NaN for a patient without one) each included
    patient's terms are multiplied by their weight."""
    beta = checked_coefficients(model, coefficients)
    width = model.width
    keep = included(model, patients, outcome=outcome, weights=weights)
    index = np.flatnonzero(keep)
    y = patients.outcome if outcome is None else outcome
    if y is None:  # included() refused it already; for the type checker
        raise ValueError("the patient table was built without the model's outcome")
    score = np.zeros(width, dtype=np.float64)
    information = np.zeros((width, width), dtype=np.float64)
    for start in range(0, index.size, CHUNK_ROWS):
        rows = index[start : start + CHUNK_ROWS]
        x = design_rows(model, patients, rows)
        w = np.ones(rows.size) if weights is None else weights[rows]
        # sigmoid(η) = (1 + tanh(η / 2)) / 2 never overflows, and μ (1 - μ) = (1 - tanh²) / 4
        # keeps its precision where μ is near 0 or 1 (1 - μ would cancel). Both stay within
        # [0, 1] and [0, 1/4] in floating point, as the sensitivities assume.
        t = np.tanh((x @ beta) / 2.0)
        mu = 0.5 * (1.0 + t)
        curvature = 0.25 * (1.0 - t * t)
        score += x.T @ (w * (y[rows] - mu))
        information += (x * (w * curvature)[:, None]).T @ x
    # The product above is symmetric up to rounding; made exactly so, as the mathematics is.
    information = (information + information.T) / 2.0
    return ModelSums(int(index.size), int(patients.size - index.size), score, information)


def upper_triangle(matrix: Floats) -> Floats:
    """The upper triangle of a square matrix, row-major: (0,0), (0,1), …, (0,p-1), (1,1), …, (p-1,p-1)."""
    rows, columns = np.triu_indices(matrix.shape[0])
    triangle: Floats = matrix[rows, columns]
    return triangle


def exact_model_release(
    plan: AnalysisPlan, patients: PatientTable, coefficients: npt.ArrayLike, weights: Floats | None = None
) -> dict[str, Floats]:
    """The blocks of a dp_glm release before noise: block name -> ``[1, cells]`` float64.

    ``patients`` must be built for :func:`agent.packages.release_layout.analysed` (the plan
    without its strata: one stratum). On a weighted plan ``weights`` holds each patient's
    weight (:func:`agent.statistics.weighting.plan_weights`; NaN: none, excluded), which
    multiplies their terms. ValueError for a plan without a model, another table, or weights
    missing on a weighted plan or given to one without weighting.
    """
    model = plan.model
    if model is None:
        raise ValueError("the plan declares no model")
    if patients.strata != 1:
        raise ValueError("a dp_glm release pools the strata: build the patients for the plan without them")
    weights = checked_weights(plan, weights, patients.size)
    if model.family is ModelFamily.COX:
        cox = cox_sums(model, patients, coefficients, weights=weights)
        return {
            GLM_COUNT: np.array([[cox.included, cox.clamped, cox.excluded]], dtype=np.float64),
            GLM_BASELINE_SCORE: cox.baseline_score.reshape(1, -1),
            GLM_SCORE: cox.score.reshape(1, -1),
            GLM_BASELINE_INFORMATION: cox.baseline_information.reshape(1, -1),
            GLM_BASELINE_CROSS: cox.cross.reshape(1, -1),
            GLM_INFORMATION: upper_triangle(cox.information).reshape(1, -1),
        }
    return logistic_release(model_sums(model, patients, coefficients, weights=weights))


def exact_propensity_release(
    plan: AnalysisPlan, patients: PatientTable, coefficients: npt.ArrayLike
) -> dict[str, Floats]:
    """The blocks of a dp_propensity release before noise: the logistic regression of the
    treated arm on the weighting's covariates (``glm.count``, ``glm.score``, ``glm.information``,
    as a logistic dp_glm's), unweighted.

    ``patients`` must be built for ``analysed(plan, DP_PROPENSITY)`` (one stratum); a patient
    whose treatment is missing or neither category is excluded. ValueError for a plan without
    weighting or another table."""
    weighting = plan.weighting
    if weighting is None:
        raise ValueError("the plan declares no weighting")
    if patients.strata != 1:
        raise ValueError("a dp_propensity release pools the strata: build the patients for the plan without them")
    arm = treatment_arm(weighting, patients)
    return logistic_release(model_sums(weighting.propensity_model, patients, coefficients, outcome=arm))


def logistic_release(sums: ModelSums) -> dict[str, Floats]:
    return {
        GLM_COUNT: np.array([[sums.included, sums.excluded]], dtype=np.float64),
        GLM_SCORE: sums.score.reshape(1, -1),
        GLM_INFORMATION: upper_triangle(sums.information).reshape(1, -1),
    }


@dataclass(frozen=True, eq=False)
class CoxSums:
    """The exact sums of one Cox task, before noise (``J`` intervals, ``p`` covariate columns)."""

    included: int
    """Included patients whose cumulative hazard was at most the cap."""
    clamped: int
    """Included patients whose expected events were scaled down to the cap."""
    excluded: int
    baseline_score: Floats
    """``[J]``: Σ (d_j - μ_j)."""
    score: Floats
    """``[p]``: Σ x (Σ_j d_j - Σ_j μ_j)."""
    baseline_information: Floats
    """``[J]``: Σ μ_j, the diagonal of the baselines' block (the rest of it is 0)."""
    cross: Floats
    """``[J, p]``: Σ μ_j x."""
    information: Floats
    """``[p, p]``: Σ (Σ_j μ_j) x xᵀ (symmetric)."""


# Scaling a patient's expected events to the cap Λ rounds (by about (J + 4) ulps, J <= 64);
# this much below it, their sum is at most Λ in floating point too, as the sensitivities assume.
_CAP_MARGIN = 1.0 - 2.0**-40


def cox_sums(
    model: ModelSpec, patients: PatientTable, coefficients: npt.ArrayLike, *, weights: Floats | None = None
) -> CoxSums:
    """A Cox model's score and information at ``coefficients`` ((α, β): ``[J + p]``, finite)
    over the included patients of ``patients``; ValueError for coefficients of another shape
    or not finite, or a model that is not Cox. With ``weights`` (NaN: no weight, excluded) each
    included patient's events and capped expected events are multiplied by their weight."""
    survival = model.survival
    if model.family is not ModelFamily.COX or survival is None:
        raise ValueError("cox_sums needs a Cox model")
    if patients.time is None or patients.event is None:
        raise ValueError("the patient table was built without the plan's survival outcome")
    theta = checked_coefficients(model, coefficients)
    intervals = len(survival.grid)
    alpha, beta = theta[:intervals], theta[intervals:]
    p = beta.size
    cap = model.max_cumulative_hazard * _CAP_MARGIN
    keep = included(model, patients, weights=weights)
    index = np.flatnonzero(keep)
    baseline_score = np.zeros(intervals, dtype=np.float64)
    score = np.zeros(p, dtype=np.float64)
    baseline_information = np.zeros(intervals, dtype=np.float64)
    cross = np.zeros((intervals, p), dtype=np.float64)
    information = np.zeros((p, p), dtype=np.float64)
    clamped = 0
    for first in range(0, index.size, CHUNK_ROWS):
        rows = index[first : first + CHUNK_ROWS]
        x = covariate_rows(model, patients, rows)
        exposure, dead = _exposure_and_events(survival.grid, patients.time[rows], patients.event[rows])
        # Finite for any coefficients a task may send (within ±1e9, 64 columns of |x| <= 1).
        eta = alpha[None, :] + (x @ beta)[:, None]
        with np.errstate(divide="ignore"):
            log_mu = np.log(exposure) + eta  # -inf where there was no exposure
        mu, over = _capped(log_mu, cap)
        clamped += int(np.count_nonzero(over))
        if weights is not None:
            # After the cap: a patient's weighted terms are their weight times bounded ones.
            w = weights[rows][:, None]
            mu, dead = w * mu, w * dead
        total = mu.sum(axis=1)
        baseline_score += (dead - mu).sum(axis=0)
        score += x.T @ (dead.sum(axis=1) - total)
        baseline_information += mu.sum(axis=0)
        cross += mu.T @ x
        information += (x * total[:, None]).T @ x
    information = (information + information.T) / 2.0
    return CoxSums(
        included=int(index.size) - clamped,
        clamped=clamped,
        excluded=int(patients.size - index.size),
        baseline_score=baseline_score,
        score=score,
        baseline_information=baseline_information,
        cross=cross,
        information=information,
    )


def _exposure_and_events(grid: tuple[float, ...], time: Floats, event: Floats) -> tuple[Floats, Floats]:
    """``[n, J]`` each: the time each patient spent in each interval of ``grid`` (follow-up
    ends at its last time; an infinite time spends every interval whole), and 1 in the
    interval of an event at or before the grid's last time (an event at time 0 is in the first)."""
    ends = np.asarray(grid, dtype=np.float64)
    starts = np.concatenate([[0.0], ends[:-1]])
    exposure = np.clip(time[:, None] - starts[None, :], 0.0, (ends - starts)[None, :])
    # searchsorted "left": t_{j-1} < time <= t_j lands in interval j (0-based j - 1).
    where = np.searchsorted(ends, time, side="left")
    dead = np.zeros_like(exposure)
    hit = np.flatnonzero((event == 1.0) & (where < ends.size))
    dead[hit, where[hit]] = 1.0
    return exposure, dead


def _capped(log_mu: Floats, cap: float) -> tuple[Floats, Flags]:
    """Each patient's expected events ``exp(log_mu)`` (a row each), scaled down together where
    they add up to more than ``cap`` to add up to it, and which rows were.

    A clamped row is its entries relative to its largest (each at most 1, their sum ``s`` in
    [1, J]) times ``cap / s``: a few roundings of numbers near 1, however large the linear
    predictor, so the sum stays within ``(J + 4)`` ulps of ``cap``. (Shifting in log space
    instead would round at the predictor's magnitude, 2⁻⁴⁰ relative near 1e4.)"""
    top = np.max(log_mu, axis=1)
    anchor = np.where(np.isfinite(top), top, 0.0)  # a row of -inf (no exposure) adds up to 0
    relative = np.exp(log_mu - anchor[:, None])
    total = relative.sum(axis=1)
    with np.errstate(divide="ignore"):
        over: Flags = anchor + np.log(total) > np.log(cap)
    scale = np.where(over, cap / np.where(over, total, 1.0), 1.0)
    # Unclamped rows: their own values (at most cap each, since their sum is).
    mu: Floats = np.where(over[:, None], relative * scale[:, None], np.exp(np.minimum(log_mu, np.log(cap))))
    return mu, over
