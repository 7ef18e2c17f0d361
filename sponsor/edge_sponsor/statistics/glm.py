"""Logistic regression over sites by differentially private Newton-Raphson (``dp_glm``).

Each round the coordinator sends every site the current coefficients β (on the design
scale below); each site releases, with Gaussian noise and no clipping, its patients'

* score ``U = Σ x (y - μ)`` (``glm.score``, sensitivity ``‖x‖_max``), and
* Fisher information ``H = Σ μ(1 - μ) x xᵀ``, upper triangle row-major (``glm.information``,
  sensitivity ``‖x‖²_max / 4``), with ``μ = sigmoid(x·β)``,

and the coordinator takes the Newton step ``β ← β + H⁻¹ U`` on the sums over sites. The
design row of a patient (both sides compute exactly this, docs/statistics.md):

* ``(intercept)``: 1;
* a numeric covariate with public bounds ``[low, high]``: ``(clamp(v) - mid) / half``, in
  [-1, 1] (``mid``, ``half`` the bounds' centre and half-width);
* a categorical covariate with categories ``c_0 … c_{m-1}``: indicators of ``c_1 … c_{m-1}``
  (``c_0`` is the reference), named ``<column>=<label>``.

so ``‖x‖²_max = 1 + #numeric + #categorical`` (each categorical covariate sets at most one 1).

The estimate's covariance has two independent parts: the sampling part ``H⁻¹`` (the usual
inverse information), and the DP noise of the last round's score, which moves the final
step by ``H⁻¹ e`` with ``e ~ N(0, S)``, ``S = (Σ_sites sd_score²) I``: ``H⁻¹ S H⁻¹``. Earlier
rounds' noise only moves the point the last step starts from; Newton's step corrects that
to first order, so it does not enter (the residual is a product of two noises, checked by
simulation in tests/sponsor_statistics/test_sponsor_glm.py).

Everything here is pure: arrays in, frozen results out. Reading releases and running the
rounds is :mod:`edge_sponsor.coordinator.glm_tasks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from statistics import NormalDist
from typing import Any

import numpy as np

from agent.packages.plan import CategoricalVariable, ModelSpec, NumericVariable, Variable, category_label
from edge_sponsor.statistics.releases import FloatArray

INTERCEPT = "(intercept)"
# The blocks a dp_glm release has (glm.count, glm.score, glm.information): each number's
# noise is σ·√k·Δ of its block.
GLM_BLOCKS = 3
# The agent refuses designs wider than this (spec: p ≤ 64).
MAX_DESIGN_COLUMNS = 64
# The eigenvalue floor relative to the largest eigenvalue: keeps the condition number of the
# projected information at most 1e6, so H⁻¹ loses at most ~6 of float64's 16 digits. A design
# whose information is genuinely this ill-conditioned is collinear (an empty category, a
# covariate constant in the cohort): the floor then leaves that direction's step at ~0
# instead of dividing by a rounding error.
RELATIVE_FLOOR = 1e-6
# Above this GlmFit.noise_to_information the first-order covariance understates the spread
# of the estimate (measured: see GlmFit.noise_to_information).
UNRELIABLE_NOISE = 1.0


# A lower-bound fit whose estimate may keep more of the start's error than this many of its SEs is
# flagged. The figure is linearised with the noisy averaged information, so it is rough; with
# the check on floored eigenvalues, bench/glm_accuracy.py (16 rounds, 3 sites) flags every fit
# on rossi (every interval holds the MLE in 6 / 39 / 80 % at ε = 1 / 3 / 8) and 90 / 28 / 0 %
# of fair's (50 / 90 / 100 %).
UNCONVERGED = 1.5


class GlmMethod(StrEnum):
    """How the coordinator steps: ``newton`` on each round's released information; ``bound``
    on the information released at β = 0, a bound on it at every β (:func:`lower_bound_iterations`)."""

    NEWTON = "newton"
    BOUND = "bound"


class ColumnKind(StrEnum):
    INTERCEPT = "intercept"
    NUMERIC = "numeric"
    INDICATOR = "indicator"


@dataclass(frozen=True)
class DesignColumn:
    """One column of the design matrix: how a patient's value becomes a number in it."""

    name: str
    kind: ColumnKind
    covariate: str | None = None
    """The plan column it reads (None for the intercept)."""
    mid: float = 0.0
    """Numeric: the bounds' centre, subtracted after clamping."""
    half: float = 1.0
    """Numeric: the bounds' half-width, divided by (values land in [-1, 1])."""
    category: str | None = None
    """Indicator: the label of the category it indicates."""


@dataclass(frozen=True)
class Design:
    """The design matrix's columns for a plan's model, and what one patient can move."""

    columns: tuple[DesignColumn, ...]
    numeric_covariates: int
    categorical_covariates: int

    @classmethod
    def of(cls, variables: Sequence[Variable], covariates: Sequence[str]) -> Design:
        """The design of a model on ``covariates``, each the column of one of the plan's ``variables``.

        Raises:
            ValueError: a covariate that is not a declared variable, a repeated one, a numeric
                variable with empty bounds, or more than MAX_DESIGN_COLUMNS columns (the agent
                refuses such a plan; the sponsor does not guess).
        """
        declared = {v.column: v for v in variables}
        columns = [DesignColumn(INTERCEPT, ColumnKind.INTERCEPT)]
        numeric = categorical = 0
        if len(set(covariates)) != len(covariates):
            raise ValueError("a covariate is listed twice")
        for name in covariates:
            variable = declared.get(name)
            if variable is None:
                raise ValueError(f"covariate {name!r} is not a variable of the plan")
            if isinstance(variable, NumericVariable):
                if not variable.half_width > 0:
                    raise ValueError(f"covariate {name!r} has empty bounds")
                columns.append(
                    DesignColumn(name, ColumnKind.NUMERIC, name, mid=variable.centre, half=variable.half_width)
                )
                numeric += 1
            else:
                assert isinstance(variable, CategoricalVariable)
                for category in variable.categories[1:]:
                    label = category_label(category)
                    columns.append(DesignColumn(f"{name}={label}", ColumnKind.INDICATOR, name, category=label))
                categorical += 1
        if len(columns) > MAX_DESIGN_COLUMNS:
            raise ValueError(f"the design has {len(columns)} columns, more than {MAX_DESIGN_COLUMNS}")
        return cls(tuple(columns), numeric, categorical)

    @classmethod
    def of_model(cls, model: ModelSpec) -> Design:
        """The design of a plan's model (its covariates are the plan's variables, in model order)."""
        return cls.of(model.covariates, [v.column for v in model.covariates])

    @property
    def p(self) -> int:
        return len(self.columns)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def norm_sq_max(self) -> float:
        """The largest ‖x‖² of one patient's row: 1 (intercept) + 1 per numeric (|x| ≤ 1) + 1 per
        categorical covariate (at most one of its indicators is 1)."""
        return float(1 + self.numeric_covariates + self.categorical_covariates)

    @property
    def score_sensitivity(self) -> float:
        """‖x (y - μ)‖ ≤ ‖x‖ since |y - μ| ≤ 1."""
        return math.sqrt(self.norm_sq_max)

    @property
    def information_sensitivity(self) -> float:
        """‖μ(1 - μ) x xᵀ‖_F = μ(1 - μ) ‖x‖² ≤ ‖x‖² / 4; the triangle is part of the matrix."""
        return self.norm_sq_max / 4.0

    def to_original(self) -> FloatArray:
        """The matrix A with β_orig = A β: coefficients per unit of each covariate's own scale.

        η = β₀ + Σ β_j (v_j - mid_j)/half_j + … = (β₀ - Σ β_j mid_j/half_j) + Σ (β_j/half_j) v_j + …;
        indicators are unchanged. Valid for values inside the bounds (outside, the agent clamps).
        """
        a = np.eye(self.p, dtype=np.float64)
        for j, column in enumerate(self.columns):
            if column.kind is ColumnKind.NUMERIC:
                a[j, j] = 1.0 / column.half
                a[0, j] = -column.mid / column.half
        return a


def triangle_size(p: int) -> int:
    return p * (p + 1) // 2


def triangle_labels(p: int) -> tuple[str, ...]:
    """The cells of ``glm.information``: ``"i,j"`` for i ≤ j, row-major."""
    rows, cols = np.triu_indices(p)
    return tuple(f"{i},{j}" for i, j in zip(rows.tolist(), cols.tolist(), strict=True))


def symmetric_from_triangle(triangle: FloatArray, p: int) -> FloatArray:
    """The symmetric pxp matrix whose upper triangle, row-major, is ``triangle``.

    The noise on (i, j) and (j, i) is then the same draw: the released triangle is the
    matrix's only noisy numbers, so mirroring adds no information and no noise.
    """
    values = np.asarray(triangle, dtype=np.float64)
    if values.shape != (triangle_size(p),):
        raise ValueError(f"an information triangle for p = {p} has {triangle_size(p)} numbers, got {values.shape}")
    matrix = np.zeros((p, p), dtype=np.float64)
    rows, cols = np.triu_indices(p)
    matrix[rows, cols] = values
    matrix[cols, rows] = values
    return matrix


@dataclass(frozen=True)
class SiteSums:
    """One site's released sums for one round, and the noise variance of each number."""

    site: str
    included: float
    excluded: float
    score: FloatArray
    information: FloatArray
    """Symmetric pxp (from the released triangle)."""
    score_noise_variance: float
    information_noise_variance: float


@dataclass(frozen=True)
class PooledSums:
    """The sums over the sites of one round; noise variances add."""

    included: float
    excluded: float
    """NaN when a site withheld its excluded count (below its minimum cell size)."""
    score: FloatArray
    information: FloatArray
    score_noise_variance: float
    information_noise_variance: float
    sites: tuple[str, ...]


def pool_sums(parts: Sequence[SiteSums]) -> PooledSums:
    """The sum of ``parts`` (at least one, all of one p)."""
    if not parts:
        raise ValueError("nothing to pool: no site released its sums")
    p = parts[0].score.shape[0]
    if any(s.score.shape != (p,) or s.information.shape != (p, p) for s in parts):
        raise ValueError("the sites' releases have different numbers of design columns")
    return PooledSums(
        included=sum(s.included for s in parts),
        excluded=sum(s.excluded for s in parts),
        score=np.sum([s.score for s in parts], axis=0),
        information=np.sum([s.information for s in parts], axis=0),
        score_noise_variance=sum(s.score_noise_variance for s in parts),
        information_noise_variance=sum(s.information_noise_variance for s in parts),
        sites=tuple(s.site for s in parts),
    )


@dataclass(frozen=True)
class Projected:
    """A symmetric matrix made positive definite: eigenvalues below ``floor`` raised to it."""

    matrix: FloatArray
    floor: float
    floored: int
    """How many eigenvalues were raised (0: the noisy matrix was used as released)."""


def positive_definite(matrix: FloatArray, noise_sd: float) -> Projected:
    """``matrix`` (symmetric) with every eigenvalue at least ``max(RELATIVE_FLOOR·λ_max, noise_sd)``.

    Why ``noise_sd``, the SD of the noise on each released entry (summed over sites): for a
    unit eigenvector v, the noise moves that eigenvalue by vᵀEv, whose SD is between
    ``noise_sd`` and ``√2·noise_sd`` (var = noise_sd²·(2 - Σ v_i⁴)). An eigenvalue below it is
    indistinguishable from 0 or negative; inverting it as released would send the Newton
    step along that direction by an amount set by noise (or uphill, for a negative one).
    Raised to the noise level, the step there is damped, and the variance reported for that
    direction (1/floor) is still as large as the data can support. Without noise the floor is
    RELATIVE_FLOOR·λ_max, which a non-collinear design never reaches.

    Raises:
        ValueError: the matrix is not square, not finite, or its largest eigenvalue is not
            positive (no information at all: nothing to estimate).
    """
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1] or not np.all(np.isfinite(values)):
        raise ValueError("the information must be a finite square matrix")
    symmetric = (values + values.T) / 2.0
    eigenvalues, vectors = np.linalg.eigh(symmetric)
    largest = float(eigenvalues[-1])
    if not largest > 0:
        raise ValueError("the pooled information has no positive eigenvalue: the sites released no information")
    floor = max(RELATIVE_FLOOR * largest, float(noise_sd))
    raised = np.maximum(eigenvalues, floor)
    projected = (vectors * raised) @ vectors.T
    return Projected((projected + projected.T) / 2.0, floor, int(np.sum(eigenvalues < floor)))


@dataclass(frozen=True)
class NewtonStep:
    """One Newton-Raphson step on one round's pooled sums."""

    start: FloatArray
    coefficients: FloatArray
    information: Projected
    sums: PooledSums


def newton_step(start: FloatArray, sums: PooledSums) -> NewtonStep:
    """``β + H⁻¹ U`` with H the pooled information made positive definite (:func:`positive_definite`)."""
    beta = np.asarray(start, dtype=np.float64)
    if beta.shape != sums.score.shape:
        raise ValueError(f"β has {beta.shape[0]} coefficients, the sums {sums.score.shape[0]}")
    projected = positive_definite(sums.information, math.sqrt(sums.information_noise_variance))
    step = np.linalg.solve(projected.matrix, sums.score)
    return NewtonStep(beta, beta + step, projected, sums)


@dataclass(frozen=True)
class Coefficient:
    """One coefficient with its standard errors and (confidence-level) intervals on both scales.

    ``se_sampling`` is the usual inverse-information SE; ``se_noise`` the SD the privacy noise
    adds; ``se`` both together (independent: variances add).
    """

    name: str
    estimate: float
    se_sampling: float
    se_noise: float
    se: float
    lower: float
    upper: float
    odds_ratio: float
    odds_ratio_lower: float
    odds_ratio_upper: float


@dataclass(frozen=True)
class GlmScale:
    """The coefficients and their covariances on one scale (the design's or the covariates' own)."""

    coefficients: tuple[Coefficient, ...]
    covariance_sampling: tuple[tuple[float, ...], ...]
    covariance_noise: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class GlmFit:
    """The final estimate of a DP Newton-Raphson logistic regression."""

    names: tuple[str, ...]
    design: GlmScale
    """Coefficients per design unit: numeric covariates per half-width of their bounds, centred."""
    original: GlmScale
    """Coefficients per unit of each covariate (intercept at every numeric covariate = 0)."""
    confidence: float
    included: float
    """Patients in the model, noisy (the last round's ``glm.count``), summed over its sites."""
    excluded: float
    sites: tuple[str, ...]
    """The sites whose sums made the last step (the estimate is their patients')."""
    floored_eigenvalues: int
    """Eigenvalues of the last round's information raised to the floor (0: as released)."""
    noise_to_information: float
    """≈ ‖noise of the pooled information‖ / its smallest eigenvalue: 2·√p·τ / λ_min, with τ the SD
    of the noise on each pooled entry (a symmetric Gaussian matrix's spectral norm is about
    2√p·τ). The covariance above is first order in the noise; measured on rossi (3 sites), it
    matches the spread of the estimates within 7 % at 0.6, understates it by up to 16 % at 1.2
    and fails outright at 1.8 (estimates thrown far by near-singular steps). Above
    UNRELIABLE_NOISE the report says the intervals are not to be trusted."""

    averaged_rounds: int = 1
    """How many rounds' one-step estimates the coefficients average (1: the last step, :func:`fit_averaged`)."""
    method: GlmMethod = GlmMethod.NEWTON
    contraction: float = 0.0
    """``bound`` fits: the spectral radius of ``I - B⁻¹H``, how much of its error an iterate keeps per round."""
    burn_in: int = 0
    """``bound`` fits: the rounds before the averaged ones."""
    transient: float = 0.0
    """``bound`` fits: the start's error still in the estimate, ``(1/K) Σ Aⁿ β̂`` over the averaged
    iterates ``n`` (the first started at 0), as a multiple of each coefficient's total SE, the largest."""

    @property
    def unreliable(self) -> str:
        """Why the intervals are not to be trusted, in words for the report; "" when they are.

        Newton: the released information is mostly noise (:attr:`noise_to_information` above
        UNRELIABLE_NOISE). Lower bound: the estimate does not depend on the noisy information,
        but the iterates averaged must have converged: the start's error is multiplied by the
        contraction once per burn-in round, and above UNCONVERGED of it is left.
        """
        if self.method is GlmMethod.BOUND:
            if self.transient > UNCONVERGED:
                return (
                    f"the iterates may not have converged: each round keeps {self.contraction:.2g} of the error, "
                    f"and the start's error left in the estimate is up to {self.transient:.2g} of a standard error; "
                    "run more rounds"
                )
            if self.floored_eigenvalues:
                # The estimate does not use the information, but its standard errors do.
                return (
                    f"the released information is mostly noise in {self.floored_eigenvalues} direction(s) (raised "
                    "to the noise level): the standard errors there understate the uncertainty; use a smaller "
                    "noise multiplier (a larger ε) or more patients"
                )
            return ""
        if self.noise_to_information <= UNRELIABLE_NOISE:
            return ""
        return (
            f"the released information is mostly noise for these patients (noise/information "
            f"{self.noise_to_information:.2g} > 1): the intervals understate the uncertainty and the estimates "
            "may be far off; use a smaller noise multiplier (a larger ε), more patients, or --method bound"
        )

    @property
    def reliable(self) -> bool:
        return not self.unreliable


def fit_from_last_step(design: Design, last: NewtonStep, confidence: float = 0.95) -> GlmFit:
    """The final coefficients (the last step's result) and their covariance.

    Sampling: ``H⁻¹`` (the last round's projected information, at the β it was evaluated at).
    Noise: ``H⁻¹ S H⁻¹``, ``S = s² I`` with ``s²`` the summed noise variance of the last round's score.

    Raises:
        ValueError: ``confidence`` not in (0, 1), or the step's width is not the design's.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if last.coefficients.shape != (design.p,):
        raise ValueError(f"the step has {last.coefficients.shape[0]} coefficients, the design {design.p}")
    sampling = _symmetric_inverse(last.information.matrix)
    noise = last.sums.score_noise_variance * (sampling @ sampling)
    return _fit(
        design,
        last.coefficients,
        sampling,
        noise,
        confidence=confidence,
        final=last.sums,
        floored_eigenvalues=last.information.floored,
        noise_to_information=_noise_to_information(last.information.matrix, last.sums.information_noise_variance),
    )


def _fit(
    design: Design,
    beta: FloatArray,
    sampling: FloatArray,
    noise: FloatArray,
    *,
    confidence: float,
    final: PooledSums,
    **about: Any,
) -> GlmFit:
    """The fit of ``beta`` with these covariances (design scale), on both scales; ``final``: the
    last round's pooled sums (its patients and sites); ``about``: the method's own fields."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    a = design.to_original()
    return GlmFit(
        names=design.names,
        design=_scale(design.names, beta, sampling, noise, z),
        original=_scale(design.names, a @ beta, a @ sampling @ a.T, a @ noise @ a.T, z),
        confidence=confidence,
        included=final.included,
        excluded=final.excluded,
        sites=final.sites,
        **about,
    )


def fit_averaged(design: Design, steps: Sequence[NewtonStep], last: int, confidence: float = 0.95) -> GlmFit:
    """The mean of the last ``last`` rounds' one-step estimates, each from its round's start and score
    with the information averaged over those rounds; ``last`` = 1 is :func:`fit_from_last_step`.

    Why: once the iterates are near the MLE, each round's one-step estimate ``β_r + H̄⁻¹ U_r`` is
    the MLE plus ``H̄⁻¹ e_r``, with ``e_r`` that round's own score noise, independent between
    rounds; the information moves little between them. Their mean has 1/``last`` of the noise
    variance (the noise part of the covariance is ``H̄⁻¹ (Σ s_r² / last²) H̄⁻¹``), and the
    averaged information has 1/``last`` of the noise variance of one round's. It is
    post-processing of releases already paid for: no ε. It needs the averaged rounds to
    have converged (start them after the first 3 or so of Newton from 0) and to pool the
    same sites; a suffix whose sites differ is cut to the rounds that share the last one's.

    Raises:
        ValueError: ``last`` not in 1..len(steps), or the widths disagree.
    """
    if not 1 <= last <= len(steps):
        raise ValueError(f"can average 1 to {len(steps)} rounds, not {last}")
    chosen = [step for step in steps[-last:] if step.sums.sites == steps[-1].sums.sites]
    if len(chosen) == 1:
        return fit_from_last_step(design, steps[-1], confidence)
    count = len(chosen)
    information, information_variance, projected = _averaged_information(chosen)
    estimates = [step.start + np.linalg.solve(projected.matrix, step.sums.score) for step in chosen]
    final = chosen[-1].sums
    pooled = PooledSums(
        included=final.included,
        excluded=final.excluded,
        score=np.mean([step.sums.score for step in chosen], axis=0),
        information=information,
        score_noise_variance=sum(step.sums.score_noise_variance for step in chosen) / count**2,
        information_noise_variance=information_variance,
        sites=final.sites,
    )
    averaged = NewtonStep(chosen[0].start, np.mean(estimates, axis=0), projected, pooled)
    return replace(fit_from_last_step(design, averaged, confidence), averaged_rounds=count)


def _noise_to_information(information: FloatArray, noise_variance: float) -> float:
    """``2·√p·τ / λ_min``: about the spectral norm of the noise on ``information`` (τ² per entry)
    over its smallest eigenvalue (:attr:`GlmFit.noise_to_information`)."""
    smallest = float(np.linalg.eigvalsh(information)[0])
    return 2.0 * math.sqrt(information.shape[0] * noise_variance) / smallest


def _averaged_information(chosen: Sequence[NewtonStep]) -> tuple[FloatArray, float, Projected]:
    """The information averaged over the ``chosen`` rounds, the noise variance of each of its
    entries (the rounds' added, over K²), and the average made positive definite."""
    count = len(chosen)
    information = np.mean([step.sums.information for step in chosen], axis=0)
    variance = sum(step.sums.information_noise_variance for step in chosen) / count**2
    return information, variance, positive_definite(information, math.sqrt(variance))


def _symmetric_inverse(matrix: FloatArray) -> FloatArray:
    inverse = np.linalg.inv(matrix)
    return (inverse + inverse.T) / 2.0


def _scale(names: Sequence[str], beta: FloatArray, sampling: FloatArray, noise: FloatArray, z: float) -> GlmScale:
    rows = interval_rows(names, beta, sampling, noise, z)
    return GlmScale(tuple(Coefficient(*row) for row in rows), matrix_rows(sampling), matrix_rows(noise))


IntervalRow = tuple[str, float, float, float, float, float, float, float, float, float]
"""name, estimate, SE sampling, SE noise, SE total, lower, upper, and the exponentials of the
estimate and of both bounds (an odds or hazard ratio and its interval)."""


def interval_rows(
    names: Sequence[str], beta: FloatArray, sampling: FloatArray, noise: FloatArray, z: float
) -> list[IntervalRow]:
    """Each coefficient's standard errors (the sampling and noise variances independent: they
    add) and its interval estimate ± z·SE, on the log scale and exponentiated."""
    rows: list[IntervalRow] = []
    for j, name in enumerate(names):
        se_sampling = math.sqrt(max(float(sampling[j, j]), 0.0))
        se_noise = math.sqrt(max(float(noise[j, j]), 0.0))
        se = math.hypot(se_sampling, se_noise)
        estimate = float(beta[j])
        lower, upper = estimate - z * se, estimate + z * se
        rows.append(
            (name, estimate, se_sampling, se_noise, se, lower, upper,
             exp_or_inf(estimate), exp_or_inf(lower), exp_or_inf(upper))
        )  # fmt: skip
    return rows


def exp_or_inf(value: float) -> float:
    """exp(value); a ratio beyond float range is reported as infinite (JSON null), never an OverflowError."""
    return math.exp(value) if value < 709.0 else math.inf


def matrix_rows(matrix: FloatArray) -> tuple[tuple[float, ...], ...]:
    """A matrix as nested tuples of floats (a frozen, JSON-ready value)."""
    return tuple(tuple(float(v) for v in row) for row in matrix)


# -- the lower-bound (MM) algorithm: steps on a curvature released once --------------------


def curvature_bound(sums: PooledSums) -> Projected:
    """``B``, a bound on the information at every β, from a round's sums at β = 0.

    At β = 0 every μ is 1/2, so the released information is ``XᵀX/4``; as ``μ(1 - μ) <= 1/4``
    it bounds the information ``Σ μ(1 - μ) x xᵀ`` at any β (Böhning and Lindsay 1988). The
    noisy matrix is made positive definite and raised by ``2√p·τ`` (τ: the SD of the noise on
    each pooled entry; about the spectral norm of that noise), so that it still bounds
    ``XᵀX/4`` itself with high probability: every step ``β + B⁻¹U(β)`` then moves towards
    the MLE without overshooting, whatever the noise on later rounds' information.
    """
    p = sums.score.shape[0]
    tau = math.sqrt(sums.information_noise_variance)
    projected = positive_definite(sums.information, tau)
    raised = projected.matrix + 2.0 * math.sqrt(p) * tau * np.eye(p)
    return Projected((raised + raised.T) / 2.0, projected.floor, projected.floored)


def bound_step(start: FloatArray, sums: PooledSums, bound: Projected) -> NewtonStep:
    """``β + B⁻¹ U``: the lower-bound step on one round's pooled score (``information``: ``B``)."""
    beta = np.asarray(start, dtype=np.float64)
    if beta.shape != sums.score.shape or bound.matrix.shape != (beta.shape[0], beta.shape[0]):
        raise ValueError(f"β has {beta.shape[0]} coefficients, the sums {sums.score.shape[0]}")
    return NewtonStep(beta, beta + np.linalg.solve(bound.matrix, sums.score), bound, sums)


def fit_iterates(design: Design, steps: Sequence[NewtonStep], last: int, confidence: float = 0.95) -> GlmFit:
    """The mean of the last ``last`` lower-bound iterates, with their covariance.

    Near the MLE β*, an iterate's error follows ``e_n = A e_{n-1} + B⁻¹ ε_n``, ``A = I - B⁻¹H``,
    ``ε_n ~ N(0, s² I)`` the round's score noise: a contraction (B bounds H) whose fixed point
    is the MLE, whatever the noise on B. The noise part of the errors has covariance
    ``V_n = A V_{n-1} Aᵀ + s² B⁻¹B⁻¹`` from ``V_0 = 0`` (β = 0 is exact) and
    ``Cov(e_i, e_j) = A^{i-j} V_j``: the mean of the chosen iterates has
    ``(1/K²) Σ_{i,j} Cov(e_i, e_j)``, exactly for this linear recursion (about
    ``H⁻¹ (s²/K) H⁻¹`` for many converged rounds: Polyak averaging). ``H`` is the information
    averaged over the chosen rounds (each released at its round's start, near β*), which
    also gives the sampling covariance ``H⁻¹``.

    Only the last stretch of rounds pooling the same sites is averaged. The start's error
    that the chosen iterates keep (:attr:`GlmFit.transient`) is measured from that stretch's
    start β_c (β = 0 for a run whose sites never changed): the mean of the iterates is
    ``β* + M (β_c - β*)`` with ``M`` the mean of their ``Aⁿ`` (n counted from β_c), so the
    error left is ``(I - M)⁻¹ M (β_c - β̂)``.

    Raises:
        ValueError: ``last`` not in 1..len(steps), or the widths disagree.
    """
    if not 1 <= last <= len(steps):
        raise ValueError(f"can average 1 to {len(steps)} rounds, not {last}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    sites = steps[-1].sums.sites
    first = len(steps)
    while first > 0 and steps[first - 1].sums.sites == sites:
        first -= 1
    chosen = list(steps[max(first, len(steps) - last) :])
    count = len(chosen)
    p = design.p
    _, information_variance, projected = _averaged_information(chosen)
    bound_inverse = np.linalg.inv(chosen[-1].information.matrix)
    contraction = np.eye(p) - bound_inverse @ projected.matrix
    radius = float(np.max(np.abs(np.linalg.eigvals(contraction))))
    noise = _mean_iterate_covariance(
        contraction,
        [step.sums.score_noise_variance * (bound_inverse @ bound_inverse.T) for step in steps],
        count,
    )
    sampling = _symmetric_inverse(projected.matrix)
    beta = np.mean([step.coefficients for step in chosen], axis=0)
    kept = np.zeros((p, p))
    power = np.eye(p)
    for index in range(first, len(steps)):
        power = power @ contraction
        if index >= len(steps) - count:
            kept = kept + power / count
    total_se = np.sqrt(np.maximum(np.diag(sampling) + np.diag(noise), 1e-300))
    transient = math.inf
    if radius < 1.0:
        with np.errstate(all="ignore"):
            try:
                left = np.linalg.solve(np.eye(p) - kept, kept @ (steps[first].start - beta))
            except np.linalg.LinAlgError:
                left = np.full(p, math.inf)
        ratio = float(np.max(np.abs(left) / total_se))
        transient = ratio if math.isfinite(ratio) else math.inf
    return _fit(
        design,
        beta,
        sampling,
        noise,
        confidence=confidence,
        final=chosen[-1].sums,
        floored_eigenvalues=projected.floored,
        noise_to_information=_noise_to_information(projected.matrix, information_variance),
        averaged_rounds=count,
        method=GlmMethod.BOUND,
        contraction=radius,
        burn_in=len(steps) - count,
        transient=transient,
    )


def _mean_iterate_covariance(contraction: FloatArray, innovations: Sequence[FloatArray], count: int) -> FloatArray:
    """The covariance of the mean of the last ``count`` of ``e_n = A e_{n-1} + η_n`` (``e_0 = 0``,
    ``η_n ~ N(0, innovations[n-1])``, independent): ``(1/K²) Σ_{i,j} Cov(e_i, e_j)`` with
    ``Cov(e_i, e_j) = A^{i-j} V_j`` for ``i >= j`` and ``V_n = A V_{n-1} Aᵀ + Q_n``."""
    p = contraction.shape[0]
    variance = np.zeros((p, p))
    cross = np.zeros((p, p))  # Σ over the earlier chosen j of A^{i-j} V_j, at the current i
    total = np.zeros((p, p))
    chosen_from = len(innovations) - count
    for index, innovation in enumerate(innovations):
        if index > chosen_from:
            cross = contraction @ (cross + variance)
        variance = contraction @ variance @ contraction.T + innovation
        if index >= chosen_from:
            total = total + variance + cross + cross.T
    total = total / count**2
    return (total + total.T) / 2.0


def lower_bound_iterations(
    design: Design,
    one_round: Callable[[FloatArray], PooledSums],
    rounds: int,
) -> list[NewtonStep]:
    """``rounds`` lower-bound steps from β = 0: the first round's information is ``XᵀX/4``,
    the bound (:func:`curvature_bound`) every step uses; each round's score moves β by
    ``B⁻¹ U(β)``. Every round still releases its information, which :func:`fit_iterates`
    averages for the covariance."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    beta = np.zeros(design.p, dtype=np.float64)
    steps: list[NewtonStep] = []
    bound: Projected | None = None
    for _ in range(rounds):
        sums = one_round(beta)
        if bound is None:
            bound = curvature_bound(sums)
        step = bound_step(beta, sums, bound)
        steps.append(step)
        beta = step.coefficients
    return steps


def newton_raphson(
    design: Design,
    one_round: Callable[[FloatArray], PooledSums],
    rounds: int,
    start: FloatArray | None = None,
) -> list[NewtonStep]:
    """``rounds`` Newton steps from ``start`` (β = 0 when None), each on the sums ``one_round(β)`` returns.

    Args:
        design: the model's design (its width fixes β's).
        one_round: asks every site for its sums at β and pools them (the coordinator runs one
            dp_glm task per site; a test sums exact or simulated releases).
        rounds: at least 1; each round is charged at every site.
        start: the first β.

    Returns:
        The steps in order; the last one's coefficients are the estimate (:func:`fit_from_last_step`).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    beta = np.zeros(design.p, dtype=np.float64) if start is None else np.asarray(start, dtype=np.float64)
    if beta.shape != (design.p,) or not np.all(np.isfinite(beta)):
        raise ValueError(f"the start must be {design.p} finite coefficients")
    steps: list[NewtonStep] = []
    for _ in range(rounds):
        step = newton_step(beta, one_round(beta))
        steps.append(step)
        beta = step.coefficients
    return steps


def score_noise_sd(design: Design, noise_multiplier: float, blocks: int = GLM_BLOCKS) -> float:
    """The SD of the noise on each ``glm.score`` number of one site: σ·√k·‖x‖_max."""
    return noise_multiplier * math.sqrt(blocks) * design.score_sensitivity


def information_noise_sd(design: Design, noise_multiplier: float, blocks: int = GLM_BLOCKS) -> float:
    """The SD of the noise on each ``glm.information`` number of one site: σ·√k·‖x‖²_max/4."""
    return noise_multiplier * math.sqrt(blocks) * design.information_sensitivity


# -- a run over the federation, as the report shows it -------------------------------

OK = "ok"
WITHHELD = "WITHHELD"


@dataclass(frozen=True)
class GlmSite:
    """One site over the run: how many rounds it was charged for, the ε charged, and why it left."""

    site: str
    status: str = OK
    """``ok``; ``WITHHELD`` (its noisy cohort was below the minimum); a gRPC code name; ``INVALID_RESULT``."""
    detail: str = ""
    rounds_charged: int = 0
    epsilon_charged: float = 0.0
    """The sum of the run's tasks' shares of the site's budget group ε (shares add up to the group's ε)."""
    budget_epsilon_spent: float = 0.0
    """The group's ε after the site's last task of the run."""


@dataclass(frozen=True)
class GlmRound:
    """One round: who was pooled, the noisy patients included, and β after the step."""

    index: int
    sites: tuple[str, ...]
    included: float
    coefficients: tuple[float, ...]
    floored_eigenvalues: int


@dataclass(frozen=True)
class GlmAnalysis:
    """A run of dp_glm rounds: the final fit (None when no round had a release), each round, each site."""

    fit: GlmFit | None
    rounds: tuple[GlmRound, ...]
    sites: tuple[GlmSite, ...]
    noise_multiplier: float
    rounds_planned: int
    stopped_early: str = ""
    not_converged: str = ""
    """Why the estimate may not have converged (the sites pooled changed in the last round), or ""."""
