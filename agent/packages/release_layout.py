"""What a statistics task releases: its blocks, their sensitivities and their noise.

One home for the release layout, read by the agent (what to compute, what the worker may
return) and by the sponsor's estimators (what each released number is and how noisy).

A release is a list of **blocks**. Each block is a table of ``strata`` by ``cells`` numbers
to which one patient contributes in **one stratum** and with L2 norm at most the block's
``sensitivity`` (a patient is counted in one cell of a count table, adds one clamped
value to a sum, leaves the risk set in one interval). A task releasing ``k`` blocks adds
Gaussian noise of standard deviation ``sigma * sqrt(k) * sensitivity`` to every number
of each block: the whole release, each block divided by ``sqrt(k) * sensitivity``, has
L2 sensitivity 1, so it is one Gaussian mechanism with noise multiplier ``sigma``,
accounted as such in the ledger (q = 1: statistics describe the whole cohort). A layout
may weigh its blocks unequally (:attr:`Block.weight`, :meth:`ReleaseLayout.noise_std`):
the same budget, spent more on some blocks than on others.

Scalar names are ``<block>[<stratum>][<cell>]`` with stratum and cell as indexes; the
labels of both come from :attr:`Block.cells` and
:meth:`agent.packages.plan.AnalysisPlan.stratum_labels` (a ``dp_glm`` release has one
stratum, labelled ``all``: the regression pools the plan's strata, see :func:`analysed`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from agent.packages.errors import PackageRejected, RejectionCode
from agent.packages.manifest import PLAN_KINDS, TaskKind, plan_lacks
from agent.packages.plan import (
    MISSING_LABEL,
    OTHER_LABEL,
    AnalysisPlan,
    CategoricalVariable,
    ModelFamily,
    ModelSpec,
    NumericVariable,
    SurvivalSpec,
    category_label,
    number_label,
)


class Suppression(StrEnum):
    """How the policy's minimum cell size applies to a block's noisy numbers."""

    # Each cell below the minimum is withheld (contingency-table counts).
    CELL = "cell"
    # Withheld with its stratum only (sums, histograms, survival exits: their cells are
    # small by design, and the noise protects them).
    STRATUM = "stratum"


class Statistic(StrEnum):
    """What a block holds; its name is ``<column>.<statistic>`` (``count``, ``survival.exits`` and
    the model's ``glm.*`` blocks alone)."""

    COUNT = "count"  # patients per stratum
    PRESENCE = "n"  # a numeric variable's present and missing values
    SUM = "sum"  # Σ (clamped value - centre of the bounds)
    SUMSQ = "sumsq"  # Σ (clamped value - centre)²
    HISTOGRAM = "histogram"  # clamped values per bin
    COUNTS = "counts"  # a categorical variable's categories, then other and missing
    EXITS = "exits"  # survival: events and censorings per interval, then missing
    # The model (dp_glm): patients included in and excluded from the regression; the score
    # Σ x (y - μ); the upper triangle of the Fisher information Σ μ (1 - μ) x xᵀ.
    MODEL_COUNT = "glm.count"
    SCORE = "glm.score"
    INFORMATION = "glm.information"
    # A Cox model's baseline (one log-hazard per grid interval): its score Σ (d - μ) per
    # interval, its information's diagonal Σ μ (the rest of the baseline's block is 0), and
    # the information between baseline and covariates Σ μ x. glm.score and glm.information
    # are then the covariates' alone.
    BASELINE_SCORE = "glm.baseline.score"
    BASELINE_INFORMATION = "glm.baseline.information"
    BASELINE_CROSS = "glm.baseline.cross"
    # A weighted plan's releases (per arm): patients with and without a weight (a missing
    # propensity covariate leaves one without), the sum of the weights, and the weighted
    # twins of a variable's counts, sum and categories and of the survival exits: each patient's contribution
    # times their weight.
    WEIGHT_COUNT = "weights.count"
    WEIGHT_SUM = "weights.sum"
    WEIGHT_SUMSQ = "weights.sumsq"
    WEIGHTED_PRESENCE = "weighted.n"
    WEIGHTED_SUM = "weighted.sum"
    WEIGHTED_COUNTS = "weighted.counts"
    WEIGHTED_EXITS = "survival.weighted.exits"


# The statistics of the whole release, not of one variable: each names its block alone.
_RELEASE_BLOCKS = {
    Statistic.COUNT: "count",
    Statistic.EXITS: "survival.exits",
    Statistic.MODEL_COUNT: Statistic.MODEL_COUNT.value,
    Statistic.SCORE: Statistic.SCORE.value,
    Statistic.INFORMATION: Statistic.INFORMATION.value,
    Statistic.BASELINE_SCORE: Statistic.BASELINE_SCORE.value,
    Statistic.BASELINE_INFORMATION: Statistic.BASELINE_INFORMATION.value,
    Statistic.BASELINE_CROSS: Statistic.BASELINE_CROSS.value,
    Statistic.WEIGHT_COUNT: Statistic.WEIGHT_COUNT.value,
    Statistic.WEIGHT_SUM: Statistic.WEIGHT_SUM.value,
    Statistic.WEIGHT_SUMSQ: Statistic.WEIGHT_SUMSQ.value,
    Statistic.WEIGHTED_EXITS: Statistic.WEIGHTED_EXITS.value,
}


def block_name(statistic: Statistic, column: str | None = None) -> str:
    """The name of the block of ``statistic`` (of ``column`` for a variable's blocks)."""
    if statistic in _RELEASE_BLOCKS:
        return _RELEASE_BLOCKS[statistic]
    if column is None:
        raise ValueError(f"a {statistic.value} block is a variable's: give its column")
    return f"{column}.{statistic.value}"


@dataclass(frozen=True)
class Block:
    statistic: Statistic
    column: str | None
    """The variable's column; None for ``count`` and ``survival.exits``."""
    cells: tuple[str, ...]
    """The labels of one stratum's cells (distinct)."""
    sensitivity: float
    """The most one patient moves the block, in L2 norm (all strata together)."""
    suppression: Suppression
    weight: float = 1.0
    """The block's share of the release's budget, relative to the others' (:meth:`ReleaseLayout.noise_std`)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0.0):
            raise ValueError(f"a block's weight must be a positive number, got {self.weight!r}")

    @property
    def name(self) -> str:
        return block_name(self.statistic, self.column)

    def scalar_name(self, stratum: int, cell: int) -> str:
        return f"{self.name}[{stratum}][{cell}]"


@dataclass(frozen=True)
class ReleaseLayout:
    """Every block a task of ``kind`` releases on ``plan``, in release order."""

    kind: TaskKind
    blocks: tuple[Block, ...]
    strata: int
    size_cells: tuple[int, ...] | None = None
    """The cells of :attr:`size_block` that count the patients the release describes (None: all);
    a dp_glm release describes its included patients, not those it counts as excluded."""

    def noise_std(self, block: Block, noise_multiplier: float) -> float:
        """The standard deviation of the Gaussian noise on each number of ``block``:
        ``σ · Δ · √(W / w)``, ``w`` the block's weight and ``W`` all blocks' together.

        Each block divided by ``Δ·√(W/w)`` moves by at most ``√(w/W)`` for one patient, so the
        whole release so divided has L2 sensitivity ``√(Σ w / W) = 1``: one Gaussian mechanism
        at σ, whatever the weights. Equal weights give every block ``σ · √k · Δ``; unequal ones
        spend more of the same budget where the estimate needs it (less noise there, more
        elsewhere).
        """
        total = math.fsum(b.weight for b in self.blocks)
        return noise_multiplier * block.sensitivity * math.sqrt(total / block.weight)

    def scalar_names(self) -> Iterator[str]:
        for block in self.blocks:
            for stratum in range(self.strata):
                for cell in range(len(block.cells)):
                    yield block.scalar_name(stratum, cell)

    def block(self, name: str) -> Block:
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(name)

    @property
    def size_block(self) -> Block:
        """The block whose cells (:attr:`size_cells`), summed per stratum, count the stratum's
        patients (``count``; ``survival.exits``, where each patient leaves the risk set once;
        ``glm.count``'s included patients): a stratum is withheld when its noisy size is below
        the minimum cell size, the release when its noisy total is below the cohort minimum."""
        return self.blocks[0]

    def withheld_with(self, block: Block) -> tuple[Block, ...]:
        """The blocks withheld where ``block``'s cells are (a mean, a histogram or a weighted sum
        of a withheld count would tell it): a block with the same cells cell by cell, any other
        in the stratum whose first cell of ``block`` is withheld.

        A numeric variable's sum, sum of squares, histogram and weighted blocks go with its
        count of present values; a categorical one's weighted counts with its counts; the sum
        of the weights with the count of weighted patients."""
        following = _FOLLOWING.get(block.statistic, ())
        return tuple(other for other in self.blocks if other.column == block.column and other.statistic in following)


# ReleaseLayout.withheld_with: the statistics of a column (or of the release) that go with one of its counts.
_FOLLOWING = {
    Statistic.PRESENCE: (
        Statistic.SUM,
        Statistic.SUMSQ,
        Statistic.HISTOGRAM,
        Statistic.WEIGHTED_PRESENCE,
        Statistic.WEIGHTED_SUM,
    ),
    Statistic.COUNTS: (Statistic.WEIGHTED_COUNTS,),
    Statistic.WEIGHT_COUNT: (Statistic.WEIGHT_SUM, Statistic.WEIGHT_SUMSQ),
}

COUNT = block_name(Statistic.COUNT)
SURVIVAL_EXITS = block_name(Statistic.EXITS)
WEIGHTED_EXITS = block_name(Statistic.WEIGHTED_EXITS)
WEIGHT_COUNT = block_name(Statistic.WEIGHT_COUNT)
WEIGHT_SUM = block_name(Statistic.WEIGHT_SUM)
WEIGHT_SUMSQ = block_name(Statistic.WEIGHT_SUMSQ)

GLM_COUNT = block_name(Statistic.MODEL_COUNT)
GLM_SCORE = block_name(Statistic.SCORE)
GLM_INFORMATION = block_name(Statistic.INFORMATION)
GLM_BASELINE_SCORE = block_name(Statistic.BASELINE_SCORE)
GLM_BASELINE_INFORMATION = block_name(Statistic.BASELINE_INFORMATION)
GLM_BASELINE_CROSS = block_name(Statistic.BASELINE_CROSS)
# The labels of the cells no declared category fills, which no category may be.
MISSING = MISSING_LABEL
OTHER = OTHER_LABEL
PRESENT = "present"
EVENT = "event"
CENSORED = "censored"
INCLUDED = "included"
EXCLUDED = "excluded"
WEIGHTED = "weighted"
UNWEIGHTED = "unweighted"
CLAMPED = "included, hazard clamped"


def layout(plan: AnalysisPlan, kind: TaskKind) -> ReleaseLayout:
    """The release of a ``kind`` task on ``plan``; ValueError for a kind that runs no plan, or
    one the plan cannot serve (dp_survival without a survival outcome, dp_glm without a model,
    dp_propensity without weighting).

    Its strata are those of :func:`analysed` (``analysed(plan, kind).stratum_labels()``): a
    weighted plan's dp_describe and dp_survival split each of the plan's strata by arm."""
    if kind not in PLAN_KINDS:
        raise ValueError(f"{kind.value} runs no analysis plan")
    lacking = plan_lacks(plan, kind)
    if lacking is not None:
        raise ValueError(f"{kind.value} needs {lacking}")
    weighting = plan.weighting
    strata = analysed(plan, kind).stratum_count
    if kind is TaskKind.DP_PROPENSITY and weighting is not None:
        return ReleaseLayout(kind, logistic_blocks(weighting.propensity_model), 1, size_cells=(0,))
    # The most one patient's weight can be: each weighted block's sensitivity is its
    # unweighted twin's times this (1 on a plan without weighting).
    cap = 1.0 if weighting is None else weighting.max_weight
    if kind is TaskKind.DP_SURVIVAL and plan.survival is not None:
        exits = survival_block(plan.survival)
        if weighting is None:
            return ReleaseLayout(kind, (exits,), strata)
        weighted = dataclasses.replace(exits, statistic=Statistic.WEIGHTED_EXITS, sensitivity=cap)
        return ReleaseLayout(kind, (exits, weighted, weight_sumsq_block(cap)), strata)
    if kind is TaskKind.DP_GLM and plan.model is not None:
        # One stratum: the whole analysed cohort (see analysed()); size: the included patients
        # (a Cox model's with their hazard as released and clamped).
        size = (0, 1) if plan.model.family is ModelFamily.COX else (0,)
        weighted_cap = None if weighting is None else cap
        return ReleaseLayout(kind, model_blocks(plan.model, weighted_cap), 1, size_cells=size)
    blocks = [Block(Statistic.COUNT, None, ("patients",), 1.0, Suppression.CELL)]
    if weighting is not None:
        blocks += [
            Block(Statistic.WEIGHT_COUNT, None, (WEIGHTED, UNWEIGHTED), 1.0, Suppression.CELL),
            Block(Statistic.WEIGHT_SUM, None, ("sum",), cap, Suppression.STRATUM),
            weight_sumsq_block(cap),
        ]
    for variable in analysed(plan, kind).variables:
        if isinstance(variable, CategoricalVariable):
            cells = (*(category_label(c) for c in variable.categories), OTHER, MISSING)
            blocks.append(Block(Statistic.COUNTS, variable.column, cells, 1.0, Suppression.CELL))
            if weighting is not None:
                blocks.append(Block(Statistic.WEIGHTED_COUNTS, variable.column, cells, cap, Suppression.STRATUM))
            continue
        blocks += numeric_blocks(variable)
        if weighting is not None:
            blocks += weighted_numeric_blocks(variable, cap)
    return ReleaseLayout(kind, tuple(blocks), strata)


def numeric_blocks(variable: NumericVariable) -> list[Block]:
    """Counts of present and missing values, the sum and the sum of squares of the clamped values
    minus the bounds' centre (each at most the half-width ``h`` from it: sensitivities ``h`` and
    ``h²``), and the histogram when bins are declared."""
    h, column = variable.half_width, variable.column
    blocks = [
        Block(Statistic.PRESENCE, column, (PRESENT, MISSING), 1.0, Suppression.CELL),
        Block(Statistic.SUM, column, ("sum",), h, Suppression.STRATUM),
        Block(Statistic.SUMSQ, column, ("sumsq",), product_up(h, h), Suppression.STRATUM),
    ]
    if variable.bins:
        edges = [number_label(edge) for edge in variable.bins]
        last = len(edges) - 2
        cells = tuple(f"[{edges[k]}, {edges[k + 1]}{']' if k == last else ')'}" for k in range(len(edges) - 1))
        blocks.append(Block(Statistic.HISTOGRAM, column, cells, 1.0, Suppression.STRATUM))
    return blocks


def weighted_numeric_blocks(variable: NumericVariable, cap: float) -> list[Block]:
    """A weighted plan's twins of :func:`numeric_blocks`' counts and sum: the weights of the
    present and missing values and the weighted sum of the clamped values minus the centre, each
    patient's contribution times their weight (at most ``cap``): what a weighted mean needs.

    No weighted sum of squares or histogram: the balance's standardised differences divide by
    the unweighted spread, and every block more adds noise to all of a release's blocks (their
    budget is shared: bench/iptw_accuracy.py measured the weighted description mostly noise at
    ε = 3 on gbsg2)."""
    h, column = variable.half_width, variable.column
    return [
        Block(Statistic.WEIGHTED_PRESENCE, column, (PRESENT, MISSING), cap, Suppression.STRATUM),
        Block(Statistic.WEIGHTED_SUM, column, ("sum",), product_up(cap, h), Suppression.STRATUM),
    ]


def weight_sumsq_block(cap: float) -> Block:
    """``weights.sumsq``: Σ w² per stratum (with ``weights.sum``, the arm's effective sample size
    (Σ w)² / Σ w², which a weighted estimate's variance needs); one patient moves it by ``cap²``."""
    return Block(Statistic.WEIGHT_SUMSQ, None, ("sumsq",), product_up(cap, cap), Suppression.STRATUM)


def model_blocks(model: ModelSpec, cap: float | None = None) -> tuple[Block, ...]:
    """The blocks of a dp_glm release: :func:`logistic_blocks` or :func:`cox_blocks`; on a
    weighted plan (``cap``: the most a patient's weight can be) each patient's terms are
    multiplied by their weight, and so the sums' sensitivities by ``cap`` (the counts stay counts).

    No sandwich (Σ g gᵀ) is released for a weighted model's variance: it would be bounded by
    ``cap² R² max(1, Λ)²``, whose noise swamps the signal at hospital sizes (measured on gbsg2,
    3 sites, W = 10, Λ = 3, σ = 0.5: a sandwich SE of 0.52 against lifelines' robust 0.137). The
    sponsor scales the model-based variance by each arm's effective sample size instead, from
    the weights' sums a weighted dp_describe releases (edge_sponsor.statistics.cox).
    """
    blocks = cox_blocks(model) if model.family is ModelFamily.COX else logistic_blocks(model)
    if cap is None:
        return blocks
    return tuple(
        block
        if block.statistic is Statistic.MODEL_COUNT
        else dataclasses.replace(block, sensitivity=product_up(block.sensitivity, cap))
        for block in blocks
    )


def logistic_blocks(model: ModelSpec) -> tuple[Block, ...]:
    """``glm.count`` (included, excluded), ``glm.score`` (one cell per design column) and
    ``glm.information`` (the upper triangle, row-major: cells ``"i,j"`` for ``i <= j``).

    One patient's design row ``x`` has ``‖x‖² <= R² = model.max_row_norm_squared``; with the
    logistic link ``|y - μ| <= 1`` and ``μ (1 - μ) <= 1/4``. So adding or removing a patient
    moves the counts by 1 (one cell), the score by ``‖x (y - μ)‖ <= R``, and the information by
    at most ``‖x xᵀ‖_F / 4 = ‖x‖² / 4 <= R² / 4`` (the triangle is part of the matrix). These
    hold for every β and every value, so nothing is clipped: the sums are the exact ones.
    The score and information are not counts: the minimum cell size withholds them only with
    their stratum (when the noisy included count is below it).
    """
    width = model.width
    bound = model.max_row_norm_squared
    return (
        Block(Statistic.MODEL_COUNT, None, (INCLUDED, EXCLUDED), 1.0, Suppression.CELL),
        Block(Statistic.SCORE, None, tuple(str(i) for i in range(width)), root_up(bound), Suppression.STRATUM),
        Block(Statistic.INFORMATION, None, _triangle_cells(width), bound / 4.0, Suppression.STRATUM),
    )


def cox_blocks(model: ModelSpec) -> tuple[Block, ...]:
    """A Cox model's release (agent.statistics.glm): ``glm.count`` (included, included with
    the hazard clamped, excluded), then for the ``J`` baseline intervals and ``p`` covariate
    columns: ``glm.baseline.score`` (J), ``glm.score`` (p), ``glm.baseline.information`` (J),
    ``glm.baseline.cross`` (J·p, cells ``"j,k"`` row-major) and ``glm.information`` (the
    covariates' upper triangle).

    One patient has ``d_j`` (1 in the interval of their event, else 0: at most one 1) and
    ``μ_j >= 0`` with ``Σ_j μ_j <= Λ`` (the agent scales a larger cumulative hazard down to
    ``Λ = model.max_cumulative_hazard``), and a covariate row with ``‖x‖² <= R²``
    (``model.max_covariate_norm_squared``). So they move, in L2 norm: the counts by 1 (one
    cell); the baseline score ``(d_j - μ_j)_j`` by ``√(1 + Λ²)`` (the cross term
    ``-2 d_j μ_j`` is never positive); the covariates' score ``x (Σ d - Σ μ)`` by
    ``R · max(1, Λ)``; the baseline information ``(μ_j)_j`` by ``Λ``; the cross block
    ``μ xᵀ`` by ``‖μ‖ ‖x‖ <= Λ R``; the covariates' information ``(Σ μ) x xᵀ`` by ``Λ R²``.
    These hold for every coefficient and every value, so the sums need no clipping beyond
    the cap. Blocks of their own (rather than one score and one information) keep the
    baseline's small sensitivities from taking the covariates' large ones, and the blocks
    share the release's budget unequally (:data:`COX_WEIGHTS`).
    """
    hazard = model.max_cumulative_hazard
    covariates = model.max_covariate_norm_squared
    root = root_up(covariates)
    intervals = len(model.baseline_names)
    p = model.width - intervals
    blocks = (
        Block(Statistic.MODEL_COUNT, None, (INCLUDED, CLAMPED, EXCLUDED), 1.0, Suppression.CELL),
        Block(
            Statistic.BASELINE_SCORE,
            None,
            model.baseline_names,
            root_up(1 + Fraction(hazard) ** 2),
            Suppression.STRATUM,
        ),
        Block(Statistic.SCORE, None, model.covariate_names, product_up(root, max(1.0, hazard)), Suppression.STRATUM),
        Block(Statistic.BASELINE_INFORMATION, None, model.baseline_names, hazard, Suppression.STRATUM),
        Block(
            Statistic.BASELINE_CROSS,
            None,
            tuple(f"{j},{k}" for j in range(intervals) for k in range(p)),
            product_up(hazard, root),
            Suppression.STRATUM,
        ),
        Block(Statistic.INFORMATION, None, _triangle_cells(p), product_up(hazard, covariates), Suppression.STRATUM),
    )
    return tuple(dataclasses.replace(block, weight=COX_WEIGHTS[block.statistic]) for block in blocks)


# How a Cox release shares its budget among its blocks (relative weights, Block.weight),
# measured with bench/cox_accuracy.py (rossi and gbsg2, 3 hospitals, ε = 1, 3, 8, 200 draws):
# the counts need next to nothing; the covariates' score sets the intervals' width; noise on
# the cross and covariates' information shrinks the estimate toward 0 through the
# information's noise floor and costs coverage. Against equal shares, at ε = 3 the full models'
# intervals cover the non-private estimate in 93 and 92 % of fits (88 and 92 %), as narrow or
# narrower.
COX_WEIGHTS = {
    Statistic.MODEL_COUNT: 1.0,
    Statistic.BASELINE_SCORE: 15.0,
    Statistic.SCORE: 30.0,
    Statistic.BASELINE_INFORMATION: 10.0,
    Statistic.BASELINE_CROSS: 14.0,
    Statistic.INFORMATION: 30.0,
}


def root_up(value: float | Fraction) -> float:
    """The least float at or above √value (exactly): a sensitivity that is a square root must
    not round below the norm it bounds (√3 rounds down, and a patient at the bounds then moves
    a block by an ulp more than declared)."""
    exact = Fraction(value)
    root = math.sqrt(float(exact))
    while Fraction(root) ** 2 < exact:
        root = math.nextafter(root, math.inf)
    return root


def product_up(a: float, b: float) -> float:
    """The least float at or above ``a · b`` (exactly), for the same reason as :func:`root_up`."""
    product = a * b
    if Fraction(product) < Fraction(a) * Fraction(b):
        product = math.nextafter(product, math.inf)
    return product


def _triangle_cells(width: int) -> tuple[str, ...]:
    return tuple(f"{i},{j}" for i in range(width) for j in range(i, width))


def analysed(plan: AnalysisPlan, kind: TaskKind) -> AnalysisPlan:
    """The plan whose patients a ``kind`` release describes.

    * dp_glm and dp_propensity pool the strata: the regression neither splits the cohort by
      them nor leaves out a patient whose stratum value is missing or not listed (cohort
      filters restrict it). dp_propensity also drops the plan's model: it fits the
      weighting's propensity model, whose outcome is the treatment's category.
    * On a weighted plan, dp_describe and dp_survival are per arm: the treatment is the last
      stratum (each of the plan's strata split into control and treated) and no longer a
      variable. A patient whose treatment is missing or neither category is in no stratum.
    * Otherwise: ``plan``.
    """
    if kind is TaskKind.DP_PROPENSITY:
        return dataclasses.replace(plan, strata=(), model=None)
    if kind is TaskKind.DP_GLM:
        return dataclasses.replace(plan, strata=())
    weighting = plan.weighting
    if weighting is None:
        return plan
    treatment = weighting.treatment.column
    return dataclasses.replace(
        plan,
        strata=(*plan.strata, weighting.arm),
        variables=tuple(variable for variable in plan.variables if variable.column != treatment),
    )


def survival_block(survival: SurvivalSpec) -> Block:
    """Exits per interval of the grid: ``event`` and ``censored`` for ``[0, t_1]``, ``(t_{j-1}, t_j]``
    and after ``t_J``, then ``missing`` (no usable time or event). Each patient is in one cell."""
    intervals = [*survival.interval_labels(), f"({number_label(survival.grid[-1])}, inf)"]
    cells = tuple(f"{interval} {outcome}" for interval in intervals for outcome in (EVENT, CENSORED))
    return Block(Statistic.EXITS, None, (*cells, MISSING), 1.0, Suppression.STRATUM)


# What one task may release: its scalars travel in the worker's result header (1 MiB) and in
# the RunTask result header, name and value each; half the worker's header leaves room for
# the values. A plan over it is refused when its package is built or uploaded, never charged
# and then lost.
MAX_RELEASE_BYTES = 512 * 1024
# Per number beyond its name: JSON quotes, separators and a float's 24 characters.
_BYTES_PER_VALUE = 32


def release_bytes(release: ReleaseLayout) -> int:
    """An upper bound on the bytes a task's scalars take in a JSON header."""
    return sum(len(name.encode()) + _BYTES_PER_VALUE for name in release.scalar_names())


def check_release_size(plan: AnalysisPlan, kinds: Iterable[TaskKind]) -> None:
    """PackageRejected (manifest_invalid) when a task of one of ``kinds`` would release more than
    MAX_RELEASE_BYTES."""
    for kind in kinds:
        release = layout(plan, kind)
        size = release_bytes(release)
        if size > MAX_RELEASE_BYTES:
            numbers = sum(1 for _ in release.scalar_names())
            raise PackageRejected(
                RejectionCode.MANIFEST_INVALID,
                f"manifest field plan: a {kind.value} task would release {numbers} numbers ({size} bytes), more "
                f"than one task may ({MAX_RELEASE_BYTES} bytes); use fewer strata, categories, bins or grid times",
            )
