"""Table 1 from the sites' noisy ``dp_describe`` releases: per stratum and overall, per site and pooled.

A column of the table is a set of contributors (site, stratum): one site's stratum, one
site's strata together ("all"), every site's stratum ("pooled"), or everything. Each
number is the sum of the contributors' released numbers and its noise variance the sum of
theirs; a contributor that withheld a number an estimate needs is left out of that
estimate and named (``sites_left_out``).

Numeric variables (bounds ``[lo, hi]``, centre ``c``): the release holds the present and
missing counts ``n`` and ``m``, the centred sums ``S = sum(x - c)`` and ``Q = sum((x - c)^2)``
of the clamped values, and optionally a histogram.

* mean ``c + S / n``; SD from ``(Q - S^2 / n) / (n - 1)`` (at least 0);
* the mean's standard error has two independent parts: sampling, ``SD^2 / n``, and the DP
  noise on ``S`` and ``n`` by the delta method, ``(v_S + (S/n)^2 v_n) / n^2``; the interval is
  mean ± z·SE;
* median and quartiles from the noisy histogram: negative bins count as 0, linear
  interpolation inside the bin where the cumulative count crosses the quantile;
* % missing ``m / (n + m)``.

Categorical variables: each category's count (with "other" and "missing"), and its share
of the column's patients ``a / N`` (``N`` from the ``count`` block), with a Wald interval whose
variance adds the sampling ``p (1 - p) / N`` and the noise ``(v_a + p^2 v_N) / N^2``, clipped into
[0, 1]. A count the hospital withheld (below its minimum cell size) is shown as suppressed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from agent.packages.manifest import TaskKind
from agent.packages.plan import AnalysisPlan, CategoricalVariable, NumericVariable
from agent.packages.release_layout import COUNT, ReleaseLayout, Statistic, analysed, block_name, layout
from edge_sponsor.statistics.releases import BlockValues, FloatArray, Pooled, SiteRelease, pool, read_block

POOLED = "pooled"
OVERALL = "all"

Contributor = tuple[str, int]


@dataclass(frozen=True)
class Estimate:
    """A noisy estimate, its standard error (sampling and DP noise) and interval; NaN where unavailable."""

    value: float
    se: float
    lower: float
    upper: float


UNAVAILABLE = Estimate(math.nan, math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class NumericSummary:
    column: str
    n: float
    missing_percent: float
    mean: Estimate
    sd: float
    median: float
    q1: float
    q3: float
    sites_left_out: tuple[str, ...]
    # The missing count was withheld (below the minimum cell size) wherever it was needed.
    missing_suppressed: bool = False


@dataclass(frozen=True)
class CategoryRow:
    """One category (or "other", "missing"): its count and share; ``suppressed`` when no contributor released it."""

    label: str
    count: float
    proportion: Estimate
    suppressed: bool
    sites_left_out: tuple[str, ...]


@dataclass(frozen=True)
class CategoricalSummary:
    column: str
    rows: tuple[CategoryRow, ...]


Summary = NumericSummary | CategoricalSummary


@dataclass(frozen=True)
class TableOneColumn:
    """One column: a site (or ``pooled``) and a stratum label (or ``all``)."""

    site: str
    stratum: str
    patients: Estimate
    suppressed: bool
    variables: tuple[Summary, ...]
    sites: tuple[str, ...]


@dataclass(frozen=True)
class TableOne:
    """Columns grouped by stratum then ``all``; in each group the pooled column first, then each site."""

    confidence: float
    sites: tuple[str, ...]
    columns: tuple[TableOneColumn, ...]


def table_one(plan: AnalysisPlan, releases: Sequence[SiteRelease], *, confidence: float = 0.95) -> TableOne:
    """Table 1 of the sites' ``dp_describe`` releases of ``plan``.

    Args:
        plan: the plan every site ran.
        releases: one per site, distinct site names.
        confidence: the level of every interval, in (0, 1).

    Returns:
        For each stratum and then for all strata together (when there are several): the
        pooled column, then one column per site. A weighted plan's strata are per arm (its
        unweighted description: the balance before weighting is edge_sponsor.statistics.iptw's).

    Raises:
        ValueError: no releases, two releases share a site name, or ``confidence`` is out of (0, 1).
        KeyError: a release lacks one of the layout's scalars.
    """
    if not releases:
        raise ValueError("no site releases to pool")
    names = [r.site for r in releases]
    if len(set(names)) != len(names):
        raise ValueError(f"two releases share a site name: {names}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    shape = layout(plan, TaskKind.DP_DESCRIBE)
    blocks = {r.site: {b.name: read_block(r, shape, b.name) for b in shape.blocks} for r in releases}
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    # A weighted plan's release is per arm (the treatment the last stratum, no longer a variable).
    plan = analysed(plan, TaskKind.DP_DESCRIBE)
    labels = plan.stratum_labels()
    groups: list[tuple[str, list[int]]] = [(label, [k]) for k, label in enumerate(labels)]
    if len(labels) > 1:
        groups.append((OVERALL, list(range(len(labels)))))
    columns: list[TableOneColumn] = []
    for label, strata in groups:
        columns.append(
            _column(POOLED, label, [(s, k) for s in names for k in strata], plan=plan, shape=shape, blocks=blocks, z=z)
        )
        for site in names:
            columns.append(
                _column(site, label, [(site, k) for k in strata], plan=plan, shape=shape, blocks=blocks, z=z)
            )
    return TableOne(confidence, tuple(names), tuple(columns))


def _parts(
    blocks: Mapping[str, Mapping[str, BlockValues]], name: str, contributors: Sequence[Contributor]
) -> list[tuple[Contributor, BlockValues]]:
    return [((site, k), blocks[site][name]) for site, k in contributors]


def _sites(keys: Sequence[Contributor]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(site for site, _ in keys))


def _column(
    site: str,
    stratum: str,
    contributors: list[Contributor],
    *,
    plan: AnalysisPlan,
    shape: ReleaseLayout,
    blocks: Mapping[str, Mapping[str, BlockValues]],
    z: float,
) -> TableOneColumn:
    count = pool(_parts(blocks, COUNT, contributors), whole=True)
    patients = float(count.values[0])
    noise = float(count.noise_variance[0])
    estimate = (
        Estimate(patients, math.sqrt(noise), patients - z * math.sqrt(noise), patients + z * math.sqrt(noise))
        if math.isfinite(patients)
        else UNAVAILABLE
    )
    summaries: list[Summary] = []
    for variable in plan.variables:
        if isinstance(variable, CategoricalVariable):
            summaries.append(_categorical(variable, contributors, shape, blocks, z))
        else:
            summaries.append(_numeric(variable, contributors, blocks, z))
    return TableOneColumn(site, stratum, estimate, not count.contributors, tuple(summaries), _sites(count.contributors))


def _numeric(
    variable: NumericVariable,
    contributors: list[Contributor],
    blocks: Mapping[str, Mapping[str, BlockValues]],
    z: float,
) -> NumericSummary:
    name = variable.column
    presence, sum_name, sumsq_name, histogram_name = (
        block_name(statistic, name)
        for statistic in (Statistic.PRESENCE, Statistic.SUM, Statistic.SUMSQ, Statistic.HISTOGRAM)
    )

    def released(key: Contributor) -> bool:
        site, k = key
        return all(np.isfinite(blocks[site][part].values[k, 0]) for part in (presence, sum_name, sumsq_name))

    usable = [key for key in contributors if released(key)]
    left_out = [key for key in contributors if not released(key)]
    mean, sd, n = UNAVAILABLE, math.nan, math.nan
    if usable:
        counts = pool(_parts(blocks, presence, usable), whole=False)
        sums = pool(_parts(blocks, sum_name, usable), whole=True)
        squares = pool(_parts(blocks, sumsq_name, usable), whole=True)
        n, total, squared = float(counts.values[0]), float(sums.values[0]), float(squares.values[0])
        if n > 1:
            centred = total / n
            sd = math.sqrt(max(squared - total * total / n, 0.0) / (n - 1))
            # Sampling and DP noise are independent: their variances add.
            noise = (float(sums.noise_variance[0]) + centred**2 * float(counts.noise_variance[0])) / n**2
            se = math.sqrt(sd * sd / n + noise)
            value = variable.centre + centred
            mean = Estimate(value, se, value - z * se, value + z * se)
    both = [k for k in contributors if bool(np.all(np.isfinite(blocks[k[0]][presence].values[k[1]])))]
    missing_percent = math.nan
    if both:
        cells = pool(_parts(blocks, presence, both), whole=True).values
        present, missing = max(float(cells[0]), 0.0), max(float(cells[1]), 0.0)
        if present + missing > 0:
            missing_percent = 100.0 * missing / (present + missing)
    q1 = median = q3 = math.nan
    if variable.bins:
        histogram = pool(_parts(blocks, histogram_name, contributors), whole=True)
        left_out += list(histogram.left_out)
        if histogram.contributors:
            q1, median, q3 = (histogram_quantile(histogram.values, variable.bins, q) for q in (0.25, 0.5, 0.75))
    return NumericSummary(name, n, missing_percent, mean, sd, median, q1, q3, _sites(left_out), not both)


def histogram_quantile(counts: FloatArray, edges: Sequence[float], q: float) -> float:
    """The ``q`` quantile of a noisy histogram: negative bins count as empty, linear inside a bin.

    Args:
        counts: one (noisy) count per bin, ``len(edges) - 1`` of them.
        edges: the bins' edges, increasing.
        q: in [0, 1].

    Returns:
        The interpolated quantile; NaN when no bin holds a positive count.

    Raises:
        ValueError: the lengths disagree or ``q`` is outside [0, 1].
    """
    if len(counts) != len(edges) - 1 or not 0.0 <= q <= 1.0:
        raise ValueError("need len(edges) - 1 counts and q in [0, 1]")
    clean = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    total = float(clean.sum())
    if total <= 0:
        return math.nan
    target = q * total
    cumulative = np.cumsum(clean)
    index = min(int(np.searchsorted(cumulative, target, side="left")), len(clean) - 1)
    before = float(cumulative[index - 1]) if index > 0 else 0.0
    inside = float(clean[index])
    fraction = (target - before) / inside if inside > 0 else 0.0
    return float(edges[index] + min(max(fraction, 0.0), 1.0) * (edges[index + 1] - edges[index]))


def _categorical(
    variable: CategoricalVariable,
    contributors: list[Contributor],
    shape: ReleaseLayout,
    blocks: Mapping[str, Mapping[str, BlockValues]],
    z: float,
) -> CategoricalSummary:
    name = block_name(Statistic.COUNTS, variable.column)
    block = shape.block(name)
    rows: list[CategoryRow] = []
    for cell, label in enumerate(block.cells):
        # Each share pools the contributors that released both this cell and their patient count,
        # so that numerator and denominator describe the same patients.
        usable = [
            (site, k)
            for site, k in contributors
            if math.isfinite(blocks[site][name].values[k, cell]) and math.isfinite(blocks[site][COUNT].values[k, 0])
        ]
        left_out = _sites([key for key in contributors if key not in usable])
        if not usable:
            rows.append(CategoryRow(label, math.nan, UNAVAILABLE, True, left_out))
            continue
        counts: Pooled = pool(_parts(blocks, name, usable), whole=False)
        patients = pool(_parts(blocks, COUNT, usable), whole=True)
        a, n = float(counts.values[cell]), float(patients.values[0])
        share = UNAVAILABLE
        if n > 0:
            p = a / n
            bounded = min(max(p, 0.0), 1.0)
            noise = (float(counts.noise_variance[cell]) + p * p * float(patients.noise_variance[0])) / n**2
            se = math.sqrt(bounded * (1.0 - bounded) / n + noise)
            share = Estimate(p, se, max(p - z * se, 0.0), min(p + z * se, 1.0))
        rows.append(CategoryRow(label, a, share, False, left_out))
    return CategoricalSummary(variable.column, tuple(rows))
