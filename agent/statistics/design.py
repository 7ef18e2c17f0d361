"""A regression model's design rows: each patient's covariates as bounded numbers.

**Design row** (:class:`agent.packages.plan.ModelSpec`, the same on the sponsor's side):
for each covariate in model order, a numeric one's ``(clamp(v, low, high) - centre) /
half_width`` (in [-1, 1]) and a categorical one's indicators of its categories but the
first (the reference); a logistic model's row starts with 1 for the intercept. The bounds
and categories are the plan's, public, so a row's norm has a public bound whatever the
patient's values: what the sensitivities of the regression's releases (agent.statistics.glm)
and the propensity weights (agent.statistics.weighting) rest on.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.packages.plan import CategoricalVariable, ModelSpec
from agent.statistics.patients import PatientTable

Floats = npt.NDArray[np.float64]
Flags = npt.NDArray[np.bool_]

# Design rows built at a time: 65536 x 64 float64 is 32 MiB at the widest design.
CHUNK_ROWS = 65536


def covariates_present(model: ModelSpec, patients: PatientTable) -> Flags:
    """Which of ``patients`` have every covariate of ``model``: a numeric value that is not null
    or NaN (an infinite one is clamped), a categorical value among the declared categories."""
    keep = np.ones(patients.size, dtype=np.bool_)
    for variable in model.covariates:
        if isinstance(variable, CategoricalVariable):
            # Codes below the category count are declared categories; "other" and "missing" exclude.
            keep &= patients.codes[variable.column] < len(variable.categories)
        else:
            keep &= ~np.isnan(patients.numbers[variable.column])
    return keep


def covariate_rows(model: ModelSpec, patients: PatientTable, rows: npt.NDArray[np.intp]) -> Floats:
    """The covariate columns ``[len(rows), len(model.covariate_names)]`` of the patients at
    ``rows`` (included ones: a row of an excluded patient holds NaN or no indicator where its
    value is missing)."""
    x = np.zeros((rows.size, len(model.covariate_names)), dtype=np.float64)
    column = 0
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


def design_rows(model: ModelSpec, patients: PatientTable, rows: npt.NDArray[np.intp]) -> Floats:
    """A logistic model's design rows ``[len(rows), model.width]``: 1, then :func:`covariate_rows`."""
    return np.hstack([np.ones((rows.size, 1), dtype=np.float64), covariate_rows(model, patients, rows)])


def checked_coefficients(model: ModelSpec, coefficients: npt.ArrayLike) -> Floats:
    """``coefficients`` as float64 ``[model.width]``; ValueError for another shape or a value not finite."""
    values = np.asarray(coefficients, dtype=np.float64)
    if values.shape != (model.width,):
        raise ValueError(f"the coefficients must have shape [{model.width}], not {list(values.shape)}")
    if not np.isfinite(values).all():
        raise ValueError("the coefficients must be finite")
    return values
