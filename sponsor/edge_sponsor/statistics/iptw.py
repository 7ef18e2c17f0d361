"""Inverse probability of treatment weighting (IPTW) from a weighted plan's noisy releases: the
covariates' balance before and after weighting, and the adjusted (weighted) survival curves.

On a weighted plan (:class:`agent.packages.plan.WeightingSpec`) the sites' ``dp_describe``
and ``dp_survival`` releases are **per arm**: the treatment is the last stratum of
``analysed(plan, kind)``, so each of the plan's strata is split into the control arm (the
treatment's first category), then the treated arm, and the arm of release stratum ``k`` is
``k % 2``. Beside the usual (unweighted) blocks each release carries their weighted twins,
every patient's contribution times their weight (docs/statistics.md §2, "A weighted plan").
Everything here pools each arm over all sites and all of the plan's strata: a contributor
(site, stratum) that withheld a number an estimate needs (its minimum cell size) is left
out of that estimate and named, as :mod:`edge_sponsor.statistics.table_one` does. Every
released number carries independent Gaussian noise of the variance
:func:`edge_sponsor.statistics.releases.read_block` gives, and the noise is carried into each
estimate's noise standard deviation by the delta method.

**Balance** (:func:`balance`). Per numeric variable and per category of each categorical one,
each arm's mean (or proportion) before weighting and after, and the standardised mean
difference (SMD) treated - control of both. Both SMDs divide by the **same** denominator, an
**unweighted** spread: for the ATE the square root of the average of the two arms' variances,
``sqrt((s_0² + s_1²) / 2)`` (Austin's pooled-variance SMD, Austin 2009, Stat Med 28:3083), for
the ATT the treated arm's ``s_1`` (the population the ATT describes); held fixed after
weighting, as Stuart (2010, Stat Sci 25:1) advises for comparing balance before and after an
adjustment and as R's cobalt does by default for each estimand. A change
of the SMD is then a change of the means alone, never weighting's effect on the spread. A
covariate is commonly taken as balanced when ``|SMD| <= 0.1``. What goes in:

* numeric (bounds ``[lo, hi]``, centre ``c``): present count ``n``, ``S = Σ (x - c)``,
  ``Q = Σ (x - c)²`` of the clamped values; mean ``c + S / n``, variance
  ``(Q - S² / n) / (n - 1)`` (at least 0); weighted mean ``c + S_w / N_w``, ``N_w`` the
  weighted present count (Σ w of the present values) and ``S_w = Σ w (x - c)``.
* a category: its share of the patients in one of the declared categories ("other" and
  missing excluded: the propensity model's design knows only the declared categories, and
  "other" is often a true 0 that a minimum cell size withholds), ``a / Σ_categories a``, and
  likewise weighted; its variance ``p (1 - p)``. Every category gets a row, the reference
  included (a balance table shows every level), named ``column=category`` as
  :attr:`agent.packages.plan.ModelSpec.covariate_names` names them. A contributor that
  withheld a category's cell is left out of all of the variable's rows (its denominator is
  unknown).

Noisy counts can be negative, a present count below 2: such an estimate is NaN, never an
exception, and so is one that needs a number every contributor withheld.

**Adjusted survival** (:func:`weighted_survival`). Per arm, the unweighted grouped Kaplan-Meier
curve of ``survival.exits`` and the weighted one of ``survival.weighted.exits`` (the adjusted
curve of Xie and Liu 2005, Stat Med 24:3089). The weighted exits are sums of weights, not
counts, so Greenwood's variance would read them as far more (or fewer) patients than their
information holds. Following Xie and Liu's effective sample size, each arm's weighted exits
are multiplied by ``c = Σ w / Σ w²`` (``Σ w`` the weighted exits' total over every cell of the
arm, missing included, ``Σ w²`` the arm's ``weights.sumsq`` of the same release, the same
patients; ``c`` kept within what weights up to the cap could give, :func:`effective_scale`):
the arm then totals its effective sample size ``(Σ w)² / Σ w²``. The curve is
unchanged by the scaling (each hazard is a ratio of weighted sums); Greenwood's variance reads
effective numbers of events and at risk; the noise variance of each scaled number is ``c²``
times the released one's, so the noise's term of ``Var(log S)`` is unchanged too. The
assumption: the weights of those still at risk are spread like the whole arm's (Xie and Liu
compute ``c`` among those at risk at each time, which the release does not carry). ``c``
itself is noisy; the curve does not depend on it, and its noise is left out of the band.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agent.packages.manifest import TaskKind
from agent.packages.plan import (
    AnalysisPlan,
    CategoricalVariable,
    Estimand,
    NumericVariable,
    WeightingSpec,
    category_label,
)
from agent.packages.release_layout import (
    COUNT,
    SURVIVAL_EXITS,
    WEIGHT_COUNT,
    WEIGHT_SUM,
    WEIGHT_SUMSQ,
    WEIGHTED_EXITS,
    Statistic,
    analysed,
    block_name,
    layout,
)
from edge_sponsor.statistics.releases import BlockValues, FloatArray, SiteRelease, pool, read_block
from edge_sponsor.statistics.survival import (
    DEFAULT_METHOD,
    KmCurve,
    KmMethod,
    Median,
    StratumSurvival,
    grouped_kaplan_meier,
)

# Balanced when |SMD| <= this: the usual rule of thumb.
DEFAULT_THRESHOLD = 0.1
# A row is marked imbalanced after weighting only when its |SMD| exceeds the threshold by more
# than this many noise SDs: the weighted blocks' noise (their sensitivity is the cap times the
# unweighted one) would otherwise flag balanced covariates at random.
NOISE_MARGIN = 2.0


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


CONTROL, TREATED = 0, 1

Contributor = tuple[str, int]
Blocks = Mapping[str, Mapping[str, BlockValues]]


@dataclass(frozen=True)
class ArmWeights:
    """One arm's weights pooled over sites and the plan's strata; NaN where not estimable.

    ``count`` is the arm's noisy number of patients; ``with_weight`` and ``without_weight``
    split it by whether the patient has a weight (one whose propensity covariate is missing
    has none and is in no weighted number). ``effective_sample_size`` is
    ``(Σ w)² / Σ w²``, how many unweighted patients carry as much information as the weighted
    arm; ``effective_sample_size_noise_sd`` its DP noise (delta method). A site in
    ``sites_left_out`` withheld one of these numbers for one of its strata and is not in it.
    """

    label: str
    count: float
    with_weight: float
    without_weight: float
    weight_sum: float
    weight_sumsq: float
    effective_sample_size: float
    effective_sample_size_noise_sd: float
    sites_left_out: tuple[str, ...]


@dataclass(frozen=True)
class BalanceRow:
    """One numeric variable (``category`` None) or one category of a categorical variable.

    ``control_before`` … ``treated_after`` are each arm's mean (numeric) or proportion of the
    patients in a declared category (category), unweighted and weighted. ``smd_before`` and
    ``smd_after`` are the standardised mean differences treated - control, both divided by
    the same unweighted spread: the arms' pooled SD for the ATE, the treated arm's for the
    ATT (module doc); ``*_noise_sd`` their standard deviation under
    the DP noise (not their sampling error). ``imbalanced_after``: ``|smd_after|`` above the
    threshold by more than NOISE_MARGIN noise SDs, so beyond what the noise explains (False
    where it is NaN). ``in_propensity_model``: the variable is one of the
    propensity model's covariates. ``sites_left_out``: sites that withheld a number this row
    needs for one of their strata, left out of it.
    """

    name: str
    column: str
    category: str | None
    in_propensity_model: bool
    control_before: float
    treated_before: float
    control_after: float
    treated_after: float
    smd_before: float
    smd_before_noise_sd: float
    smd_after: float
    smd_after_noise_sd: float
    imbalanced_after: bool
    sites_left_out: tuple[str, ...]


@dataclass(frozen=True)
class Balance:
    """The covariates' balance before and after weighting.

    ``arms`` are the control arm, then the treated one; ``rows`` follow the plan's variables.
    ``sites`` pooled into at least one estimate; ``sites_left_out`` were left out of at least
    one (each row and arm names its own).
    """

    threshold: float
    arms: tuple[ArmWeights, ArmWeights]
    rows: tuple[BalanceRow, ...]
    sites: tuple[str, ...]
    sites_left_out: tuple[str, ...]


@dataclass(frozen=True)
class ArmSurvival:
    """One arm's survival, unweighted and weighted (IPTW-adjusted), pooled over sites and strata.

    ``weighted.curve`` is the adjusted Kaplan-Meier curve with Greenwood's variance on effective
    numbers (module doc); ``weighted.patients`` is the effective number of patients in it (the
    scaled exits' total, the missing cell excluded) and ``weighted.median_follow_up`` the
    weighted reverse Kaplan-Meier's median. ``weight_sum`` (over every exit cell, missing
    included) and ``weight_sumsq`` are the arm's Σ w and Σ w² in the survival release,
    ``scale`` = Σ w / Σ w² the factor applied to its weighted exits, and
    ``effective_sample_size`` = (Σ w)² / Σ w²; NaN where not estimable.
    """

    label: str
    unweighted: StratumSurvival
    weighted: StratumSurvival
    weight_sum: float
    weight_sumsq: float
    scale: float
    effective_sample_size: float


@dataclass(frozen=True)
class WeightedSurvival:
    """Each arm's curves (control, then treated), and which sites they pool or leave out."""

    method: KmMethod
    confidence: float
    grid: tuple[float, ...]
    arms: tuple[ArmSurvival, ArmSurvival]
    sites: tuple[str, ...]
    sites_left_out: tuple[str, ...]


def balance(plan: AnalysisPlan, releases: Sequence[SiteRelease], *, threshold: float = DEFAULT_THRESHOLD) -> Balance:
    """The covariates' balance between the arms before and after weighting (module doc).

    Args:
        plan: the weighted plan every site ran.
        releases: the sites' ``dp_describe`` releases of ``plan``, one per site, distinct site
            names, each with the site's own noise multiplier.
        threshold: ``|SMD|`` above which a row is marked imbalanced after weighting, > 0.

    Returns:
        The arms' weights, one row per numeric variable and per category of each categorical
        variable of the analysed plan (the treatment is not among them), and the sites.

    Raises:
        ValueError: the plan declares no weighting, there are no releases, two share a site
            name, or ``threshold`` is not a positive number.
        KeyError: a release lacks one of the layout's scalars.
    """
    weighting = _weighting(plan)
    if not (math.isfinite(threshold) and threshold > 0.0):
        raise ValueError(f"threshold must be a positive number, got {threshold}")
    names = _site_names(releases)
    shape = layout(plan, TaskKind.DP_DESCRIBE)
    blocks = {r.site: {b.name: read_block(r, shape, b.name) for b in shape.blocks} for r in releases}
    arms = _arm_contributors(names, shape.strata)
    covariates = {variable.column for variable in weighting.covariates}
    att = weighting.estimand is Estimand.ATT
    rows: list[BalanceRow] = []
    used: list[Contributor] = []
    left_out: list[Contributor] = []
    for variable in analysed(plan, TaskKind.DP_DESCRIBE).variables:
        model = variable.column in covariates
        if isinstance(variable, NumericVariable):
            new, keys, dropped = _numeric_row(variable, arms, blocks, threshold=threshold, model=model, att=att)
            rows.append(new)
        else:
            new_rows, keys, dropped = _categorical_rows(
                variable, arms, blocks, threshold=threshold, model=model, att=att
            )
            rows += new_rows
        used += keys
        left_out += dropped
    arm_weights = []
    for arm, contributors in enumerate(arms):
        weights, keys, dropped = _arm_weights(category_label(weighting.treatment.categories[arm]), contributors, blocks)
        arm_weights.append(weights)
        used += keys
        left_out += dropped
    return Balance(
        threshold,
        (arm_weights[CONTROL], arm_weights[TREATED]),
        tuple(rows),
        _ordered_sites(names, used),
        _ordered_sites(names, left_out),
    )


def weighted_survival(
    plan: AnalysisPlan,
    releases: Sequence[SiteRelease],
    *,
    method: KmMethod = DEFAULT_METHOD,
    confidence: float = 0.95,
) -> WeightedSurvival:
    """Each arm's unweighted and IPTW-adjusted Kaplan-Meier curves (module doc).

    Args:
        plan: the weighted plan every site ran (it must declare survival).
        releases: the sites' ``dp_survival`` releases of ``plan``, one per site, distinct
            site names, each with the site's own noise multiplier.
        method: the risk set of an interval (:class:`edge_sponsor.statistics.survival.KmMethod`).
        confidence: the level of every pointwise band and median interval, in (0, 1).

    Returns:
        The control arm's curves, then the treated arm's, pooled over sites and the plan's strata.

    Raises:
        ValueError: the plan declares no weighting or no survival, there are no releases, two
            share a site name, or ``confidence`` is out of (0, 1).
        KeyError: a release lacks one of the layout's scalars.
    """
    weighting = _weighting(plan)
    if plan.survival is None:
        raise ValueError("the plan declares no survival outcome: it has no survival curves")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    names = _site_names(releases)
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    blocks = {r.site: {b.name: read_block(r, shape, b.name) for b in shape.blocks} for r in releases}
    treatment = weighting.treatment
    curves = _Curves(names, plan.survival.grid, method, confidence)
    results: list[ArmSurvival] = []
    used: list[Contributor] = []
    left_out: list[Contributor] = []
    for arm, contributors in enumerate(_arm_contributors(names, shape.strata)):
        label = category_label(treatment.categories[arm])
        stratum = f"{treatment.column}={label}"
        exits = pool(_parts(blocks, SURVIVAL_EXITS, contributors), whole=True)
        unweighted = curves.of(stratum, exits.values, exits.noise_variance, exits.contributors, exits.left_out)
        usable = [
            key
            for key in contributors
            if all(blocks[key[0]][name].released(key[1]) for name in (WEIGHTED_EXITS, WEIGHT_SUMSQ))
        ]
        dropped = [key for key in contributors if key not in usable]
        total = sumsq = scale = ess = math.nan
        cells = np.full(len(shape.block(WEIGHTED_EXITS).cells), np.nan)
        variance = np.zeros_like(cells)
        if usable:
            weighted = pool(_parts(blocks, WEIGHTED_EXITS, usable), whole=True)
            squares = pool(_parts(blocks, WEIGHT_SUMSQ, usable), whole=True)
            total, sumsq = float(weighted.values.sum()), float(squares.values[0])
            patients = float(pool(_parts(blocks, SURVIVAL_EXITS, usable), whole=True).values.sum())
            scale = effective_scale(total, sumsq, patients, weighting.max_weight)
            if math.isfinite(scale):
                # Effective numbers: the arm's weighted exits then total (Σ w)² / Σ w².
                ess = total * scale
                cells = scale * weighted.values
                variance = scale * scale * weighted.noise_variance
        adjusted = curves.of(f"{stratum}, weighted", cells, variance, usable, dropped)
        results.append(ArmSurvival(label, unweighted, adjusted, total, sumsq, scale, ess))
        used += [*exits.contributors, *usable]
        left_out += [*exits.left_out, *dropped]
    return WeightedSurvival(
        method,
        confidence,
        tuple(plan.survival.grid),
        (results[CONTROL], results[TREATED]),
        _ordered_sites(names, used),
        _ordered_sites(names, left_out),
    )


def effective_scale(weight_sum: float, weight_sumsq: float, patients: float, max_weight: float) -> float:
    """``c = Σ w / Σ w²``, the factor that makes an arm's weights total its effective sample size,
    from noisy sums, kept within what any weights could give: at least ``1 / max_weight`` (every
    weight at most the cap: ``Σ w² <= W Σ w``) and at most ``patients / Σ w`` (an effective sample
    size is at most the patients: ``(Σ w)² <= n Σ w²``). The noise on ``Σ w²`` (sensitivity
    ``W²``) is the largest of the three at hospital sizes; the bounds are post-processing of
    public numbers. NaN when the sums are not positive."""
    if not (weight_sum > 0.0 and weight_sumsq > 0.0):
        return math.nan
    upper = patients / weight_sum if patients > 0.0 else math.inf
    return min(max(weight_sum / weight_sumsq, 1.0 / max_weight), max(upper, 1.0 / max_weight))


# -- inputs and contributors -------------------------------------------------------------------------


def _weighting(plan: AnalysisPlan) -> WeightingSpec:
    if plan.weighting is None:
        raise ValueError("the plan declares no weighting: it has no treatment arms to balance or weigh")
    return plan.weighting


def _site_names(releases: Sequence[SiteRelease]) -> list[str]:
    if not releases:
        raise ValueError("no site releases to pool")
    names = [r.site for r in releases]
    if len(set(names)) != len(names):
        raise ValueError(f"two releases share a site name: {names}")
    return names


def _arm_contributors(names: Sequence[str], strata: int) -> tuple[list[Contributor], list[Contributor]]:
    """Each arm's (site, stratum) pairs: the treatment is the last stratum, varying fastest."""
    control = [(site, k) for site in names for k in range(strata) if k % 2 == CONTROL]
    treated = [(site, k) for site in names for k in range(strata) if k % 2 == TREATED]
    return control, treated


def _parts(blocks: Blocks, name: str, contributors: Sequence[Contributor]) -> list[tuple[Contributor, BlockValues]]:
    return [((site, k), blocks[site][name]) for site, k in contributors]


def _finite(blocks: Blocks, key: Contributor, name: str, cells: slice) -> bool:
    return bool(np.all(np.isfinite(blocks[key[0]][name].values[key[1], cells])))


def _ordered_sites(names: Sequence[str], keys: Sequence[Contributor]) -> tuple[str, ...]:
    present = {site for site, _ in keys}
    return tuple(site for site in names if site in present)


# -- balance -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Moments:
    """One arm's row: the unweighted mean (or proportion) and variance and the weighted mean, each
    with its gradient with respect to the arm's pooled released numbers ``x``, whose noise
    variances are ``noise``. NaN where not estimable."""

    mean: float
    mean_grad: FloatArray
    variance: float
    variance_grad: FloatArray
    weighted_mean: float
    weighted_mean_grad: FloatArray
    noise: FloatArray


def _numeric_moments(variable: NumericVariable, x: FloatArray, noise: FloatArray) -> _Moments:
    """``x`` = (n, S, Q, N_w, S_w): present count, centred sum and sum of squares, and their weighted twins."""
    n, total, squares, weighted_n, weighted_total = (float(value) for value in x)
    mean = variance = weighted_mean = math.nan
    mean_grad, variance_grad, weighted_grad = (np.zeros(5) for _ in range(3))
    if n > 0.0:
        mean = variable.centre + total / n
        mean_grad = np.array([-total / n**2, 1.0 / n, 0.0, 0.0, 0.0])
    if n > 1.0:
        raw = (squares - total * total / n) / (n - 1.0)
        variance = max(raw, 0.0)
        if raw > 0.0:
            variance_grad = np.array(
                [(total * total / n**2 - raw) / (n - 1.0), -2.0 * total / (n * (n - 1.0)), 1.0 / (n - 1.0), 0.0, 0.0]
            )
    if weighted_n > 0.0:
        weighted_mean = variable.centre + weighted_total / weighted_n
        weighted_grad = np.array([0.0, 0.0, 0.0, -weighted_total / weighted_n**2, 1.0 / weighted_n])
    return _Moments(mean, mean_grad, variance, variance_grad, weighted_mean, weighted_grad, noise)


def _share_moments(cell: int, x: FloatArray, noise: FloatArray) -> _Moments:
    """``x`` = the K declared categories' cells unweighted, then the K weighted; ``cell`` the category's."""
    size = x.size // 2
    counts, weighted = x[:size], x[size:]
    present, weighted_present = float(counts.sum()), float(weighted.sum())
    mean = variance = weighted_mean = math.nan
    mean_grad, variance_grad, weighted_grad = (np.zeros(x.size) for _ in range(3))
    if present > 0.0:
        mean = float(counts[cell]) / present
        # d(a_j / P)/d a_i = (δ_ij - p) / P
        mean_grad[:size] = (np.arange(size) == cell) / present - mean / present
        raw = mean * (1.0 - mean)
        variance = max(raw, 0.0)
        if raw > 0.0:
            variance_grad = (1.0 - 2.0 * mean) * mean_grad
    if weighted_present > 0.0:
        weighted_mean = float(weighted[cell]) / weighted_present
        weighted_grad[size:] = (np.arange(size) == cell) / weighted_present - weighted_mean / weighted_present
    return _Moments(mean, mean_grad, variance, variance_grad, weighted_mean, weighted_grad, noise)


def _smd(control: _Moments, treated: _Moments, *, weighted: bool, att: bool) -> tuple[float, float]:
    """The SMD treated - control (weighted means or not) over the unweighted spread, and its noise
    SD by the delta method (the arms' numbers are independent, each with its own noise variances).

    The spread is ``sqrt((s_0² + s_1²) / 2)`` for the ATE and the treated arm's ``s_1`` for the
    ATT (the population the ATT is about; cobalt's defaults for each estimand)."""
    square = treated.variance if att else (control.variance + treated.variance) / 2.0
    if weighted:
        m0, g0, m1, g1 = (
            control.weighted_mean,
            control.weighted_mean_grad,
            treated.weighted_mean,
            treated.weighted_mean_grad,
        )
    else:
        m0, g0, m1, g1 = control.mean, control.mean_grad, treated.mean, treated.mean_grad
    difference = m1 - m0
    if not (square > 0.0 and math.isfinite(square) and math.isfinite(difference)):
        return math.nan, math.nan
    scale = math.sqrt(square)
    # SMD = Δ / D: dSMD = dΔ / D - Δ dD² / (2 D³), with dD² = (d s_0² + d s_1²) / 2 (ATE) or d s_1² (ATT).
    curvature = difference / (2.0 * scale**3)
    share = 1.0 if att else 0.5
    grad1 = g1 / scale - curvature * share * treated.variance_grad
    grad0 = -g0 / scale - (0.0 if att else curvature * share) * control.variance_grad
    noise = float(np.sum(grad1 * grad1 * treated.noise) + np.sum(grad0 * grad0 * control.noise))
    return difference / scale, math.sqrt(noise)


def _row(
    name: str,
    column: str,
    category: str | None,
    *,
    model: bool,
    moments: Sequence[_Moments | None],
    threshold: float,
    left_out: tuple[str, ...],
    att: bool,
) -> BalanceRow:
    control, treated = moments
    nan = math.nan
    before = after = (nan, nan)
    if control is not None and treated is not None:
        before = _smd(control, treated, weighted=False, att=att)
        after = _smd(control, treated, weighted=True, att=att)
    return BalanceRow(
        name=name,
        column=column,
        category=category,
        in_propensity_model=model,
        control_before=control.mean if control is not None else nan,
        treated_before=treated.mean if treated is not None else nan,
        control_after=control.weighted_mean if control is not None else nan,
        treated_after=treated.weighted_mean if treated is not None else nan,
        smd_before=before[0],
        smd_before_noise_sd=before[1],
        smd_after=after[0],
        smd_after_noise_sd=after[1],
        imbalanced_after=bool(abs(after[0]) - NOISE_MARGIN * _zero_if_nan(after[1]) > threshold),
        sites_left_out=left_out,
    )


def _numeric_row(
    variable: NumericVariable,
    arms: Sequence[Sequence[Contributor]],
    blocks: Blocks,
    *,
    threshold: float,
    model: bool,
    att: bool,
) -> tuple[BalanceRow, list[Contributor], list[Contributor]]:
    column = variable.column
    presence, total, squares, weighted_presence, weighted_total = (
        block_name(statistic, column)
        for statistic in (
            Statistic.PRESENCE,
            Statistic.SUM,
            Statistic.SUMSQ,
            Statistic.WEIGHTED_PRESENCE,
            Statistic.WEIGHTED_SUM,
        )
    )
    first = slice(0, 1)  # the present count (the missing one is not needed)
    moments: list[_Moments | None] = []
    used: list[Contributor] = []
    left_out: list[Contributor] = []
    for contributors in arms:
        usable = [
            key
            for key in contributors
            if all(
                _finite(blocks, key, name, first)
                for name in (presence, total, squares, weighted_presence, weighted_total)
            )
        ]
        used += usable
        left_out += [key for key in contributors if key not in usable]
        if not usable:
            moments.append(None)
            continue
        pooled = [
            pool(_parts(blocks, name, usable), whole=False)
            for name in (presence, total, squares, weighted_presence, weighted_total)
        ]
        x = np.array([float(p.values[0]) for p in pooled])
        noise = np.array([float(p.noise_variance[0]) for p in pooled])
        moments.append(_numeric_moments(variable, x, noise))
    names = tuple(dict.fromkeys(site for site, _ in left_out))
    return (
        _row(column, column, None, model=model, moments=moments, threshold=threshold, left_out=names, att=att),
        used,
        left_out,
    )


def _categorical_rows(
    variable: CategoricalVariable,
    arms: Sequence[Sequence[Contributor]],
    blocks: Blocks,
    *,
    threshold: float,
    model: bool,
    att: bool,
) -> tuple[list[BalanceRow], list[Contributor], list[Contributor]]:
    counts = block_name(Statistic.COUNTS, variable.column)
    weighted = block_name(Statistic.WEIGHTED_COUNTS, variable.column)
    size = len(variable.categories)  # the declared categories: the shares' denominator
    present = slice(0, size)
    pooled: list[tuple[FloatArray, FloatArray] | None] = []
    used: list[Contributor] = []
    left_out: list[Contributor] = []
    for contributors in arms:
        usable = [
            key
            for key in contributors
            if _finite(blocks, key, counts, present) and _finite(blocks, key, weighted, present)
        ]
        used += usable
        left_out += [key for key in contributors if key not in usable]
        if not usable:
            pooled.append(None)
            continue
        plain, twin = (pool(_parts(blocks, name, usable), whole=False) for name in (counts, weighted))
        x = np.concatenate([plain.values[:size], twin.values[:size]])
        noise = np.concatenate([plain.noise_variance[:size], twin.noise_variance[:size]])
        pooled.append((x, noise))
    names = tuple(dict.fromkeys(site for site, _ in left_out))
    rows = []
    for cell, category in enumerate(variable.categories):
        label = category_label(category)
        moments = [None if part is None else _share_moments(cell, *part) for part in pooled]
        rows.append(
            _row(
                f"{variable.column}={label}",
                variable.column,
                label,
                model=model,
                moments=moments,
                threshold=threshold,
                left_out=names,
                att=att,
            )
        )
    return rows, used, left_out


def _arm_weights(
    label: str, contributors: Sequence[Contributor], blocks: Blocks
) -> tuple[ArmWeights, list[Contributor], list[Contributor]]:
    count = pool(_parts(blocks, COUNT, contributors), whole=True)
    split = pool(_parts(blocks, WEIGHT_COUNT, contributors), whole=False)
    usable = [
        key for key in contributors if all(blocks[key[0]][name].released(key[1]) for name in (WEIGHT_SUM, WEIGHT_SUMSQ))
    ]
    total = sumsq = ess = ess_sd = math.nan
    if usable:
        sums, squares = (pool(_parts(blocks, name, usable), whole=True) for name in (WEIGHT_SUM, WEIGHT_SUMSQ))
        total, sumsq = float(sums.values[0]), float(squares.values[0])
        if sumsq > 0.0 and math.isfinite(total):
            ess = total * total / sumsq
            # d ESS / d Σw = 2 Σw / Σw², d ESS / d Σw² = -(Σw / Σw²)²
            ess_sd = math.sqrt(
                (2.0 * total / sumsq) ** 2 * float(sums.noise_variance[0])
                + (total / sumsq) ** 4 * float(squares.noise_variance[0])
            )
    # The split is a count table: a withheld cell (often the "without a weight" count, a true 0
    # below the minimum cell size) is shown as withheld and leaves nobody out of an estimate.
    left_out = [*count.left_out, *(key for key in contributors if key not in usable)]
    used = [*count.contributors, *split.contributors, *usable]
    weights = ArmWeights(
        label=label,
        count=float(count.values[0]),
        with_weight=float(split.values[0]),
        without_weight=float(split.values[1]),
        weight_sum=total,
        weight_sumsq=sumsq,
        effective_sample_size=ess,
        effective_sample_size_noise_sd=ess_sd,
        sites_left_out=tuple(dict.fromkeys(site for site, _ in left_out)),
    )
    return weights, used, left_out


# -- survival ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curves:
    """Kaplan-Meier curves of pooled exits on one grid, with one method and level."""

    names: Sequence[str]
    grid: Sequence[float]
    method: KmMethod
    confidence: float

    def of(
        self,
        label: str,
        cells: FloatArray,
        noise_variance: FloatArray,
        contributors: Sequence[Contributor],
        dropped: Sequence[Contributor],
    ) -> StratumSurvival:
        """The curve (and the reverse one's median, the follow-up) of pooled exit ``cells``
        (event, censored per interval, then missing); all NaN without contributors or where a
        cell is not finite."""
        intervals = len(self.grid) + 1
        finite = bool(contributors) and bool(np.all(np.isfinite(cells)))
        values = cells if finite else np.zeros_like(cells)
        events, censored = values[0 : 2 * intervals : 2], values[1 : 2 * intervals : 2]
        variance = float(noise_variance.max()) if finite else 0.0
        method, confidence = self.method, self.confidence
        curve = grouped_kaplan_meier(events, censored, variance, self.grid, method=method, confidence=confidence)
        reverse = grouped_kaplan_meier(censored, events, variance, self.grid, method=method, confidence=confidence)
        if not finite:
            nothing = tuple(math.nan for _ in curve.times)
            curve = KmCurve(curve.times, nothing, nothing, nothing, nothing, nothing, nothing, Median(None, None, None))
            reverse = curve
        patients = float(values[: 2 * intervals].sum()) if finite else math.nan
        sites, left_out = _ordered_sites(self.names, contributors), _ordered_sites(self.names, dropped)
        return StratumSurvival(label, curve, reverse.median, patients, sites, left_out)
