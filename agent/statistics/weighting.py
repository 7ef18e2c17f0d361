"""Inverse probability of treatment weighting: each patient's weight, and the propensity model's release.

A weighted plan (:class:`agent.packages.plan.WeightingSpec`) compares a treated arm with
controls made to resemble it. The coordinator first fits the propensity model ``e(x)``, the
probability of the treated arm given the covariates, with ``dp_propensity`` tasks (a logistic
regression: :func:`agent.statistics.glm.exact_propensity_release`); it then sends the fitted coefficients with
every other task on the plan, and the agent weighs each patient by
:func:`propensity_weights`:

* ATE: a treated patient ``1 / e(x)``, a control ``1 / (1 - e(x))``;
* ATT: a treated patient 1, a control ``e(x) / (1 - e(x))``;

each cut to the plan's public ``max_weight``. A patient whose treatment is missing or
neither category, or who lacks a covariate of the propensity model, has no weight (NaN)
and is left out of every weighted sum.

Why the weights need no other bound: the coefficients are the task's, public to the
coordinator and the same for every patient, and a patient's weight depends on their own
row only. Adding or removing one patient changes no other patient's weight, so a weighted
sum moves by that patient's weight (at most the cap) times what they move the unweighted
one: the weighted blocks' sensitivities (agent.packages.release_layout) are the
unweighted ones times the cap, for every coefficient a coordinator could send, a hostile
one with huge coefficients included (its weights are the cap or near 0, never more).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.packages.plan import AnalysisPlan, Estimand, WeightingSpec
from agent.statistics.design import CHUNK_ROWS, checked_coefficients, covariates_present, design_rows
from agent.statistics.patients import PatientTable

Floats = npt.NDArray[np.float64]


def treatment_arm(weighting: WeightingSpec, patients: PatientTable) -> Floats:
    """Each patient's arm: 0.0 control, 1.0 treated, NaN for a treatment missing or neither category.

    Read from the treatment's codes where the table holds the treatment as a variable (the
    pooled releases: dp_propensity, dp_glm), else from the stratum, where the treatment is
    the last stratum (dp_describe and dp_survival: agent.packages.release_layout.analysed)."""
    codes = patients.codes.get(weighting.treatment.column)
    if codes is not None:
        return np.where(codes == 0, 0.0, np.where(codes == 1, 1.0, np.nan))
    return (patients.stratum % 2).astype(np.float64)


def propensity_weights(weighting: WeightingSpec, patients: PatientTable, coefficients: npt.ArrayLike) -> Floats:
    """Each patient's weight at the propensity model's ``coefficients`` (``[width]``, finite), in
    ``[0, max_weight]``; NaN where the patient has none (see the module doc). ValueError for
    coefficients of another shape or not finite."""
    model = weighting.propensity_model
    beta = checked_coefficients(model, coefficients)
    arm = treatment_arm(weighting, patients)
    weights = np.full(patients.size, np.nan)
    index = np.flatnonzero(~np.isnan(arm) & covariates_present(model, patients))
    for start in range(0, index.size, CHUNK_ROWS):
        rows = index[start : start + CHUNK_ROWS]
        eta = design_rows(model, patients, rows) @ beta
        weights[rows] = _weight(eta, arm[rows], weighting.estimand, weighting.max_weight)
    return weights


def _weight(eta: Floats, treated: Floats, estimand: Estimand, cap: float) -> Floats:
    """The weights of patients with linear predictor ``eta`` (``e = sigmoid(eta)``) and arm
    ``treated`` (0 or 1), cut to ``cap``.

    Written with ``exp(±eta)`` (``1/e = 1 + exp(-eta)``, ``1/(1 - e) = 1 + exp(eta)``,
    ``e/(1 - e) = exp(eta)``), never dividing by a probability that rounds to 0: a huge
    predictor overflows to infinity, which the cap cuts, and a weight is never NaN."""
    with np.errstate(over="ignore"):
        if estimand is Estimand.ATE:
            raw = np.where(treated == 1.0, 1.0 + np.exp(-eta), 1.0 + np.exp(eta))
        else:
            raw = np.where(treated == 1.0, 1.0, np.exp(eta))
    weights: Floats = np.minimum(raw, cap)
    return weights


def plan_weights(plan: AnalysisPlan, patients: PatientTable, propensity: npt.ArrayLike | None) -> Floats | None:
    """The weights of ``patients`` on ``plan`` at the ``propensity`` coefficients; None on a plan
    without weighting. ValueError when a weighted plan gets no coefficients or an unweighted one some."""
    if plan.weighting is None:
        if propensity is not None:
            raise ValueError("the plan declares no weighting: it takes no propensity coefficients")
        return None
    if propensity is None:
        raise ValueError("a weighted plan's release needs the propensity model's coefficients")
    return propensity_weights(plan.weighting, patients, propensity)


def checked_weights(plan: AnalysisPlan, weights: Floats | None, patients: int) -> Floats | None:
    """``weights`` when they are what :func:`plan_weights` makes for ``patients`` patients on
    ``plan``: None on a plan without weighting, else one weight each, in ``[0, max_weight]`` or
    NaN. ValueError otherwise: a weight above the cap would exceed every weighted block's
    sensitivity, so the sums refuse one whatever computed it."""
    if plan.weighting is None:
        if weights is not None:
            raise ValueError("a plan without weighting takes no weights")
        return None
    if weights is None:
        raise ValueError("a weighted plan's release takes each patient's weight")
    if weights.shape != (patients,):
        raise ValueError(f"the weights must have shape [{patients}], not {list(weights.shape)}")
    usable = weights[~np.isnan(weights)]
    if not ((usable >= 0.0) & (usable <= plan.weighting.max_weight)).all():
        raise ValueError(f"a weight is outside [0, {plan.weighting.max_weight:g}]")
    return weights
