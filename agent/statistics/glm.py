"""The plan's regression model (``dp_glm``): design rows, who is included, the score and the information.

A ``dp_glm`` task sends the current coefficients β; the agent returns, with Gaussian noise,
the logistic log-likelihood's score ``Σ x_i (y_i - μ_i)`` and Fisher information
``Σ μ_i (1 - μ_i) x_i x_iᵀ`` (``μ_i = sigmoid(x_i · β)``) over its included patients, and how
many patients it included and excluded. The coordinator adds the sites' sums and takes a
Newton-Raphson step.

**Design row** (:class:`agent.packages.plan.ModelSpec`, the same on the sponsor's side):
1 for the intercept; for each covariate in model order, a numeric one's
``(clamp(v, low, high) - centre) / half_width`` (in [-1, 1]) and a categorical one's
indicators of its categories but the first (the reference). Its columns are
:attr:`ModelSpec.design_names`.

**Included** patients have every covariate present (a numeric value that is not null or
NaN, infinite values being clamped like any other; a categorical value among the declared
categories) and an outcome of exactly 0 or 1 (false or true). Any other patient is
excluded: counted, and nothing else. Whether a patient is included depends on their own
row only, so adding or removing one moves one count by one and the sums by one row's
contribution, which :func:`agent.packages.release_layout.model_blocks` bounds.

The sums are taken over chunks of rows, so that a million patients need a few MiB of
design rows at a time, not ``patients x p`` floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.packages.plan import AnalysisPlan, CategoricalVariable, ModelSpec
from agent.packages.release_layout import GLM_COUNT, GLM_INFORMATION, GLM_SCORE
from agent.statistics.patients import PatientTable

Floats = npt.NDArray[np.float64]
Flags = npt.NDArray[np.bool_]

# Design rows built at a time: 65536 x 64 float64 is 32 MiB at the widest design.
CHUNK_ROWS = 65536


def included(model: ModelSpec, patients: PatientTable) -> Flags:
    """Which of ``patients`` the regression uses: every covariate present, the outcome 0 or 1."""
    if patients.outcome is None:
        raise ValueError("the patient table was built without the model's outcome")
    y = patients.outcome
    keep: Flags = (y == 0.0) | (y == 1.0)  # NaN equals neither: a missing outcome excludes
    for variable in model.covariates:
        if isinstance(variable, CategoricalVariable):
            # Codes below the category count are declared categories; "other" and "missing" exclude.
            keep &= patients.codes[variable.column] < len(variable.categories)
        else:
            keep &= ~np.isnan(patients.numbers[variable.column])
    return keep


def design_rows(model: ModelSpec, patients: PatientTable, rows: npt.NDArray[np.intp]) -> Floats:
    """The design rows ``[len(rows), model.width]`` of the patients at ``rows`` (included ones:
    a row of an excluded patient holds NaN or no indicator where its value is missing)."""
    x = np.zeros((rows.size, model.width), dtype=np.float64)
    x[:, 0] = 1.0
    column = 1
    for variable in model.covariates:
        if isinstance(variable, CategoricalVariable):
            codes = patients.codes[variable.column][rows]
            for k in range(1, len(variable.categories)):
                x[:, column] = codes == k
                column += 1
        else:
            values = np.clip(patients.numbers[variable.column][rows], variable.low, variable.high)
            # Clamped again: the subtraction and division round, and one ulp beyond 1 would
            # exceed the row norm the release's sensitivities assume.
            x[:, column] = np.clip((values - variable.centre) / variable.half_width, -1.0, 1.0)
            column += 1
    return x


@dataclass(frozen=True, eq=False)
class ModelSums:
    """The exact sums of one task, before noise."""

    included: int
    excluded: int
    score: Floats
    """``[p]``: Σ x (y - μ) over the included patients."""
    information: Floats
    """``[p, p]``: Σ μ (1 - μ) x xᵀ over the included patients (symmetric)."""


def model_sums(model: ModelSpec, patients: PatientTable, coefficients: npt.ArrayLike) -> ModelSums:
    """The score and information at ``coefficients`` (β, ``[model.width]``, finite) over the
    included patients of ``patients``; ValueError for coefficients of another shape or not finite."""
    beta = np.asarray(coefficients, dtype=np.float64)
    width = model.width
    if beta.shape != (width,):
        raise ValueError(f"the coefficients must have shape [{width}], not {list(beta.shape)}")
    if not np.isfinite(beta).all():
        raise ValueError("the coefficients must be finite")
    keep = included(model, patients)
    index = np.flatnonzero(keep)
    if patients.outcome is None:  # included() refused it already; for the type checker
        raise ValueError("the patient table was built without the model's outcome")
    outcome = patients.outcome
    score = np.zeros(width, dtype=np.float64)
    information = np.zeros((width, width), dtype=np.float64)
    for start in range(0, index.size, CHUNK_ROWS):
        rows = index[start : start + CHUNK_ROWS]
        x = design_rows(model, patients, rows)
        # sigmoid(η) = (1 + tanh(η / 2)) / 2 never overflows, and μ (1 - μ) = (1 - tanh²) / 4
        # keeps its precision where μ is near 0 or 1 (1 - μ would cancel). Both stay within
        # [0, 1] and [0, 1/4] in floating point, as the sensitivities assume.
        t = np.tanh((x @ beta) / 2.0)
        mu = 0.5 * (1.0 + t)
        weight = 0.25 * (1.0 - t * t)
        score += x.T @ (outcome[rows] - mu)
        information += (x * weight[:, None]).T @ x
    # The product above is symmetric up to rounding; made exactly so, as the mathematics is.
    information = (information + information.T) / 2.0
    return ModelSums(int(index.size), int(patients.size - index.size), score, information)


def upper_triangle(matrix: Floats) -> Floats:
    """The upper triangle of a square matrix, row-major: (0,0), (0,1), …, (0,p-1), (1,1), …, (p-1,p-1)."""
    rows, columns = np.triu_indices(matrix.shape[0])
    triangle: Floats = matrix[rows, columns]
    return triangle


def exact_model_release(plan: AnalysisPlan, patients: PatientTable, coefficients: npt.ArrayLike) -> dict[str, Floats]:
    """The blocks of a dp_glm release before noise: block name -> ``[1, cells]`` float64.

    ``patients`` must be built for :func:`agent.packages.release_layout.analysed` (the plan
    without its strata: one stratum). ValueError for a plan without a model or another table.
    """
    model = plan.model
    if model is None:
        raise ValueError("the plan declares no model")
    if patients.strata != 1:
        raise ValueError("a dp_glm release pools the strata: build the patients for the plan without them")
    sums = model_sums(model, patients, coefficients)
    return {
        GLM_COUNT: np.array([[sums.included, sums.excluded]], dtype=np.float64),
        GLM_SCORE: sums.score.reshape(1, -1),
        GLM_INFORMATION: upper_triangle(sums.information).reshape(1, -1),
    }
