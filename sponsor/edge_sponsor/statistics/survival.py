"""Pooled grouped Kaplan-Meier, median survival and follow-up, and the log-rank test, from noisy exits.

Each site releases, per stratum, how many patients left the risk set in each interval of
the plan's public grid ``[0, t_1], (t_1, t_2], ..., (t_J, inf)`` by the event and by
censoring (:func:`agent.packages.release_layout.survival_block`), each number with independent
Gaussian noise of a known variance ``v``. Pooling adds the sites' numbers and their
variances; a site that withheld a stratum is left out of that stratum's pool and named.

**At risk.** The number at risk at the start of interval ``i`` is the suffix sum of exits
``N_i = sum_{m >= i} (d_m + c_m)``: its noise variance ``2 v (J + 1 - i)`` is smallest
where few patients remain, which is where the hazard is most sensitive to it.

**Actuarial by default, product-limit on request.** The product-limit form is
``S(t_j) = prod_{i < j} (1 - d_i / N_i)``; the actuarial (life-table) form divides by
``N_i - c_i / 2``: a patient censored inside an interval was at risk for about half of it.
Measured against lifelines' KaplanMeierFitter at the grid times on real data (exact
counts, bench/survival_accuracy.py): on a grid of every distinct time the product-limit
is exact and the actuarial is not (up to 0.018 on rossi); but privacy forces coarse grids
(the noise in ``S`` grows with the number of intervals), and there the actuarial form is
far closer wherever censoring is spread over follow-up, as with staggered entry: gbsg2
yearly grid 0.058 (product-limit) against 0.012 (actuarial), half-yearly 0.033 against
0.009; lung half-yearly 0.069 against 0.023. Where censoring falls on the grid times
(rossi: everyone still free is censored at week 52, a grid time) the product-limit is
exact and the actuarial is off by up to 0.073 on a quarterly grid: choose
:attr:`KmMethod.PRODUCT_LIMIT` for administrative censoring at a grid time, or for a grid
of every distinct time.

**Noisy counts.** Noise makes counts negative and the curve non-monotone. The estimator
keeps the raw counts in the hazards ``h_i = d_i / N_i`` (clamping each count at zero would
add about ``0.4 sqrt(v)`` to every empty interval: on a fine grid a large upward bias in
the cumulative hazard), bounds each hazard to ``[-1, 1]``, multiplies, then projects the
curve onto non-increasing functions by isotonic regression (pool-adjacent-violators, the
least-squares projection) and clips it into ``[0, 1]``. The curve stops (NaN) from the
first interval whose risk set is below one patient: nothing is estimable beyond it.
Numbers at risk are shown rounded, at least zero and non-increasing.

**Variance = Greenwood + DP noise, by the delta method.** ``Var(log S(t_j))`` is
Greenwood's ``sum_{i<j} d_i / (N_i (N_i - d_i))`` plus ``v * |grad log S(t_j)|^2``, the
gradient taken with respect to every released exit count (each enters every ``N_i`` at or
before its interval), in closed form. The noise is additive, Gaussian, independent of the
data and of known variance, so the first-order term is exact up to the curvature of
``log(1 - d/N)``, which is small wherever the curve is worth reading (``N_i`` much larger
than ``sqrt(v)``); it costs O(J) per curve and gives the same answer on every run, which a
Monte-Carlo over the noise would not. tests/sponsor_statistics checks the noise term
against the spread of the estimator over repeated noise draws, and the coverage of the band.
Pointwise ``1 - alpha`` intervals are on the log(-log) scale, as lifelines' default.

**Median.** The first grid time at which ``S <= 0.5`` (None: not reached); its interval
is Brookmeyer-Crowley read off the band: the first times at which the lower and the upper
limits reach 0.5. Median follow-up is the median of the reverse Kaplan-Meier (censoring
as the event).

**Log-rank.** Per interval, observed minus expected events per stratum ``d_ki - N_ki d_i / N_i``
and the hypergeometric covariance ``d_i (N_i - d_i) / (N_i - 1) * N_ki / N_i * (δ_kl - N_li / N_i)``,
summed over intervals with at least two at risk; chi-square with ``K - 1`` degrees of freedom.
The noise in the released counts moves ``O - E`` independently of the data, so under the null
its covariance is the hypergeometric one plus ``sum_l v_l G_l G_l^T`` (delta method, ``G_l`` the
gradient of ``O - E`` with respect to stratum ``l``'s counts); the statistic uses their sum.
Only sites that released every stratum enter the test: a site missing from one group only
would make the groups differ by site as well as by stratum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist

import numpy as np

from agent.packages.manifest import TaskKind
from agent.packages.plan import AnalysisPlan
from agent.packages.release_layout import SURVIVAL_EXITS, analysed, layout
from edge_sponsor.statistics.releases import BlockValues, FloatArray, SiteRelease, pool, read_block


class KmMethod(StrEnum):
    """How the risk set of an interval is counted."""

    # Everyone still at risk at the start of the interval (exact on a grid of every distinct time).
    PRODUCT_LIMIT = "product-limit"
    # Censored patients count for half the interval (the life-table estimator).
    ACTUARIAL = "actuarial"


# Privacy needs coarse grids, where the actuarial risk set is the closer one (module docstring).
DEFAULT_METHOD = KmMethod.ACTUARIAL


@dataclass(frozen=True)
class Median:
    """A median time with its interval; None where the curve (or a limit of its band) never reaches 0.5."""

    estimate: float | None
    lower: float | None
    upper: float | None


@dataclass(frozen=True)
class KmCurve:
    """A grouped Kaplan-Meier curve at ``times`` = (0, t_1, ..., t_J); NaN where not estimable.

    ``variance_sampling`` and ``variance_noise`` are the two parts of ``Var(log S)``
    (Greenwood's and the DP noise's); ``at_risk[j]`` is the number still at risk just
    after ``times[j]`` (the start of the next interval), unrounded.
    """

    times: tuple[float, ...]
    survival: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    variance_sampling: tuple[float, ...]
    variance_noise: tuple[float, ...]
    at_risk: tuple[float, ...]
    median: Median


@dataclass(frozen=True)
class StratumSurvival:
    """One stratum's pooled curve, its median follow-up and which sites it pools.

    ``patients`` is the noisy number with a usable time and event (the sum of the exits;
    patients counted as ``missing`` are not in the curve). A site listed in
    ``sites_left_out`` withheld this stratum (its minimum cell size) and is not in the pool.
    """

    label: str
    curve: KmCurve
    median_follow_up: Median
    patients: float
    sites: tuple[str, ...]
    sites_left_out: tuple[str, ...]


@dataclass(frozen=True)
class LogRank:
    """The log-rank test between strata, its variance including the DP noise."""

    strata: tuple[str, ...]
    observed: tuple[float, ...]
    expected: tuple[float, ...]
    statistic: float
    degrees_of_freedom: int
    p_value: float
    # Share of the variance of O - E (trace) that is DP noise: how much privacy cost the test.
    noise_share: float
    sites: tuple[str, ...]
    sites_left_out: tuple[str, ...]


@dataclass(frozen=True)
class SurvivalAnalysis:
    """Per-stratum curves (then the overall one when there are several strata) and the log-rank test."""

    method: KmMethod
    confidence: float
    grid: tuple[float, ...]
    strata: tuple[StratumSurvival, ...]
    overall: StratumSurvival | None
    log_rank: LogRank | None


def grouped_kaplan_meier(
    events: FloatArray,
    censored: FloatArray,
    noise_variance: float,
    grid: Sequence[float],
    *,
    method: KmMethod = DEFAULT_METHOD,
    confidence: float = 0.95,
) -> KmCurve:
    """The Kaplan-Meier curve of grouped exits, its pointwise band and its median.

    Args:
        events: noisy event counts per interval, length ``len(grid) + 1`` (the last
            interval is after ``t_J``).
        censored: noisy censoring counts per interval, same length.
        noise_variance: the variance of the noise on each count (0 for exact counts).
        grid: the plan's times ``t_1 < ... < t_J``.
        method: the risk set of an interval (see :class:`KmMethod`).
        confidence: the pointwise level of the band, in (0, 1).

    Returns:
        The curve at (0, t_1, ..., t_J), post-processed as the module says.

    Raises:
        ValueError: lengths disagree, or ``confidence`` or ``noise_variance`` is out of range.
    """
    times, d, c = _check(events, censored, grid)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not math.isfinite(noise_variance) or noise_variance < 0:
        raise ValueError(f"noise variance must be finite and ≥ 0, got {noise_variance}")
    size = len(grid)
    kappa = 0.5 if method is KmMethod.ACTUARIAL else 0.0
    at_risk = np.cumsum((d + c)[::-1])[::-1]  # N_0 .. N_J
    risk = (at_risk - kappa * c)[:size]  # the risk set of the intervals that end at a grid time
    # Estimable up to (not including) the first interval with under one patient at risk.
    estimable = np.cumprod(risk > 0.5).astype(bool)
    safe = np.where(estimable, risk, 1.0)
    hazard = np.clip(d[:size] / safe, -1.0, 1.0)
    raw = np.cumprod(np.where(estimable, 1.0 - hazard, 1.0))
    curve = np.clip(_decreasing(raw[estimable]), 0.0, 1.0)
    survival = np.full(size, np.nan)
    survival[estimable] = curve

    # Var(log S): Greenwood on the counts clamped into [0, N], and the noise's delta-method term.
    clamped = np.clip(d[:size], 0.0, safe)
    alive = safe - clamped
    a = np.where(estimable & (alive > 0), clamped / (safe * np.where(alive > 0, alive, 1.0)), 0.0)
    prefix = np.concatenate(([0.0], np.cumsum(a)))  # A_0 .. A_J: A_j = Greenwood at t_j
    # Interval m < j contributes its event count's gradient A_m - 1/N_m and its censoring
    # count's A_{m+1} - kappa a_m; every count at or after interval j enters all the N_i
    # (i < j) with gradient A_j.
    before = (prefix[:size] - 1.0 / safe) ** 2 + (prefix[1:] - kappa * a) ** 2
    later = 2.0 * (size + 1 - np.arange(1, size + 1)) * prefix[1:] ** 2
    noise = noise_variance * (np.cumsum(before) + later)
    sampling = np.where(estimable, prefix[1:], np.nan)
    noise = np.where(estimable, noise, np.nan)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    lower, upper = log_log_band(survival, sampling + noise, z)

    shown = np.concatenate(([1.0], survival))
    low = np.concatenate(([1.0], lower))
    high = np.concatenate(([1.0], upper))
    return KmCurve(
        times=times,
        survival=_floats(shown),
        lower=_floats(low),
        upper=_floats(high),
        variance_sampling=_floats(np.concatenate(([0.0], sampling))),
        variance_noise=_floats(np.concatenate(([0.0], noise))),
        at_risk=_floats(at_risk),
        median=Median(
            _first_at_or_below(times, shown), _first_at_or_below(times, low), _first_at_or_below(times, high)
        ),
    )


def log_log_band(survival: FloatArray, variance_log: FloatArray, z: float) -> tuple[FloatArray, FloatArray]:
    """Pointwise limits ``exp(-exp(log(-log S) ± z sd / |log S|))`` (lifelines' default band).

    ``variance_log`` is ``Var(log S)``, ``sd`` its root. Where the curve is not distinguishable
    from 1 (``-log S < z sd``: early on, or whenever noise swamps the few first events) the
    log(-log) scale breaks down (its half-width ``z sd / |log S|`` grows without bound and the
    lower limit falls to 0 at a curve of 0.999); there the limits are on the log scale,
    ``[S exp(-z sd), min(1, S exp(z sd))]``, which reach 1. Where ``S = 0`` they are
    ``[0, 0]``; NaN stays NaN.
    """
    sd = np.sqrt(np.maximum(variance_log, 0.0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_s = np.log(survival)
        theta = np.log(-log_s)
        half = z * sd / np.abs(log_s)
        lower = np.exp(-np.exp(theta + half))
        upper = np.exp(-np.exp(theta - half))
        near_one = -log_s < z * sd
        lower = np.where(near_one, survival * np.exp(-z * sd), lower)
        upper = np.where(near_one, np.minimum(survival * np.exp(z * sd), 1.0), upper)
    zero = survival <= 0.0
    lower = np.where(zero, 0.0, lower)
    upper = np.where(zero, 0.0, upper)
    return lower, upper


def log_rank(
    events: FloatArray, censored: FloatArray, noise_variance: Sequence[float]
) -> tuple[FloatArray, FloatArray, float, int, float, float]:
    """The grouped log-rank test of K strata whose variance includes the DP noise.

    Args:
        events: [K, intervals] noisy event counts per stratum.
        censored: [K, intervals] noisy censoring counts.
        noise_variance: per stratum, the noise variance of each of its counts.

    Returns:
        (observed, expected) per stratum, the chi-square statistic, its degrees of freedom
        ``K - 1``, the p-value, and the noise's share of the variance of ``O - E``.

    Raises:
        ValueError: fewer than two strata, or shapes disagree.
    """
    d = np.asarray(events, dtype=np.float64)
    c = np.asarray(censored, dtype=np.float64)
    groups = d.shape[0]
    if d.ndim != 2 or d.shape != c.shape or groups < 2 or len(noise_variance) != groups:
        raise ValueError("log-rank needs [K, intervals] events and censored for K ≥ 2 strata, one variance each")
    at_risk_k = np.cumsum((d + c)[:, ::-1], axis=1)[:, ::-1]
    at_risk = at_risk_k.sum(axis=0)
    deaths = d.sum(axis=0)
    used = at_risk > 1.5  # two or more at risk, read through the noise (2 - 1e-9 is 2)
    safe = np.where(used, at_risk, 1.0)
    p = np.where(used, deaths / safe, 0.0)
    expected_k = at_risk_k * p
    observed = np.where(used, d, 0.0).sum(axis=1)
    expected = expected_k.sum(axis=1)
    u = (observed - expected)[: groups - 1]

    dead = np.clip(deaths, 0.0, safe)
    share = np.clip(at_risk_k, 0.0, safe) / safe
    weight = np.where(used, dead * (safe - dead) / np.maximum(safe - 1.0, 1.0), 0.0)
    hyper = np.diag(share @ weight) - np.einsum("i,ki,li->kl", weight, share, share)
    hyper = hyper[: groups - 1, : groups - 1]

    # Gradients of U_k with respect to stratum l's event and censoring counts of interval m.
    cum_p = np.cumsum(p)  # P_m
    q = np.where(used, at_risk_k * deaths / safe**2, 0.0)
    cum_q = np.cumsum(q, axis=1)  # Q_km
    identity = np.eye(groups)[: groups - 1, :, None]
    grad_d = (
        identity * (used - cum_p)[None, None, :]
        + (cum_q - np.where(used, at_risk_k / safe, 0.0))[: groups - 1, None, :]
    )
    grad_c = identity * (-cum_p)[None, None, :] + cum_q[: groups - 1, None, :]
    v = np.asarray(noise_variance, dtype=np.float64)
    noise = np.einsum("klm,jlm,l->kj", grad_d, grad_d, v) + np.einsum("klm,jlm,l->kj", grad_c, grad_c, v)
    total = hyper + noise
    statistic = float(u @ np.linalg.pinv(total) @ u)
    df = groups - 1
    trace = float(np.trace(total))
    noise_share = float(np.trace(noise)) / trace if trace > 0 else math.nan
    return observed, expected, statistic, df, chi_square_sf(statistic, df), noise_share


def chi_square_sf(x: float, df: int) -> float:
    """P(X >= x) for X chi-square with ``df`` ≥ 1 degrees of freedom, in closed form.

    The sponsor's distribution does not depend on scipy; for integer degrees of freedom the
    tail is a finite sum (even ``df``: a Poisson tail; odd: the normal tail plus a sum).

    Raises:
        ValueError: ``df`` < 1.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    if not x > 0:
        return 1.0 if not math.isnan(x) else math.nan
    half = x / 2.0
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    root = math.sqrt(x)
    total = math.erfc(root / math.sqrt(2.0))
    term = math.sqrt(2.0 / math.pi) * math.exp(-half)
    for i in range(1, (df - 1) // 2 + 1):
        term *= x / (2 * i - 1) if i > 1 else root
        total += term
    return min(1.0, total)


def analyse_survival(
    plan: AnalysisPlan,
    releases: Sequence[SiteRelease],
    *,
    method: KmMethod = DEFAULT_METHOD,
    confidence: float = 0.95,
) -> SurvivalAnalysis:
    """Pools the sites' ``dp_survival`` releases of ``plan`` into curves per stratum, overall and a log-rank test.

    Args:
        plan: the plan every site ran (it must declare survival).
        releases: one per site, distinct site names.
        method: the risk set of an interval (:class:`KmMethod`).
        confidence: the level of every pointwise band and median interval.

    Returns:
        One :class:`StratumSurvival` per stratum in release order; the overall curve (all
        strata pooled) when the plan has several; the log-rank test between strata when
        at least two strata were released by at least one site that released them all.

    Raises:
        ValueError: the plan declares no survival, there are no releases or two share a site name.
        KeyError: a release lacks one of the layout's scalars.
    """
    if plan.survival is None:
        raise ValueError("the plan declares no survival outcome")
    blocks = _site_blocks(plan, releases)
    grid = plan.survival.grid
    # A weighted plan's release is per arm (the treatment its last stratum): these are its unweighted curves.
    labels = analysed(plan, TaskKind.DP_SURVIVAL).stratum_labels()
    strata = tuple(
        _stratum(labels[k], [((site, k), block) for site, block in blocks], grid, method, confidence)
        for k in range(len(labels))
    )
    overall = None
    if len(labels) > 1:
        everyone = [((site, k), block) for site, block in blocks for k in range(len(labels))]
        overall = _stratum("all", everyone, grid, method, confidence)
    return SurvivalAnalysis(method, confidence, tuple(grid), strata, overall, _log_rank(labels, blocks))


def _site_blocks(plan: AnalysisPlan, releases: Sequence[SiteRelease]) -> list[tuple[str, BlockValues]]:
    if not releases:
        raise ValueError("no site releases to pool")
    names = [r.site for r in releases]
    if len(set(names)) != len(names):
        raise ValueError(f"two releases share a site name: {names}")
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    return [(r.site, read_block(r, shape, SURVIVAL_EXITS)) for r in releases]


def _stratum(
    label: str,
    parts: list[tuple[tuple[str, int], BlockValues]],
    grid: Sequence[float],
    method: KmMethod,
    confidence: float,
) -> StratumSurvival:
    pooled = pool(parts, whole=True)
    sites = tuple(dict.fromkeys(site for site, _ in pooled.contributors))
    left_out = tuple(dict.fromkeys(site for site, _ in pooled.left_out))
    intervals = len(grid) + 1
    cells = pooled.values
    if not pooled.contributors:
        cells = np.zeros_like(cells)
    events, censored = cells[0 : 2 * intervals : 2], cells[1 : 2 * intervals : 2]
    variance = float(pooled.noise_variance.max())
    curve = grouped_kaplan_meier(events, censored, variance, grid, method=method, confidence=confidence)
    reverse = grouped_kaplan_meier(censored, events, variance, grid, method=method, confidence=confidence)
    if not pooled.contributors:
        nothing = tuple(math.nan for _ in curve.times)
        curve = KmCurve(curve.times, nothing, nothing, nothing, nothing, nothing, nothing, Median(None, None, None))
        reverse = curve
    patients = float(cells[: 2 * intervals].sum()) if pooled.contributors else math.nan
    return StratumSurvival(label, curve, reverse.median, patients, sites, left_out)


def _log_rank(labels: Sequence[str], blocks: list[tuple[str, BlockValues]]) -> LogRank | None:
    if len(labels) < 2:
        return None
    complete = [(site, block) for site, block in blocks if all(block.released(k) for k in range(len(labels)))]
    left_out = tuple(site for site, _ in blocks if all(site != kept for kept, _ in complete))
    if not complete:
        return None
    intervals = (len(complete[0][1].block.cells) - 1) // 2
    events = np.zeros((len(labels), intervals))
    censored = np.zeros((len(labels), intervals))
    variance = np.zeros(len(labels))
    for _, block in complete:
        events += block.values[:, 0 : 2 * intervals : 2]
        censored += block.values[:, 1 : 2 * intervals : 2]
        variance += block.noise_variance
    # A stratum with (noisily) no patients carries only noise: it is no group to compare.
    kept = [k for k in range(len(labels)) if events[k].sum() + censored[k].sum() >= 1.0]
    if len(kept) < 2:
        return None
    observed, expected, statistic, df, p_value, share = log_rank(events[kept], censored[kept], list(variance[kept]))
    return LogRank(
        strata=tuple(labels[k] for k in kept),
        observed=_floats(observed),
        expected=_floats(expected),
        statistic=statistic,
        degrees_of_freedom=df,
        p_value=p_value,
        noise_share=share,
        sites=tuple(site for site, _ in complete),
        sites_left_out=left_out,
    )


def _check(
    events: FloatArray, censored: FloatArray, grid: Sequence[float]
) -> tuple[tuple[float, ...], FloatArray, FloatArray]:
    d = np.asarray(events, dtype=np.float64)
    c = np.asarray(censored, dtype=np.float64)
    if d.shape != (len(grid) + 1,) or c.shape != d.shape:
        raise ValueError(f"events and censored need {len(grid) + 1} intervals for a grid of {len(grid)} times")
    return (0.0, *(float(t) for t in grid)), d, c


def _decreasing(values: FloatArray) -> FloatArray:
    """The non-increasing sequence closest to ``values`` in least squares (pool adjacent violators)."""
    means: list[float] = []
    sizes: list[int] = []
    for value in values:
        means.append(float(value))
        sizes.append(1)
        while len(means) > 1 and means[-2] < means[-1]:
            size = sizes[-2] + sizes[-1]
            merged = (means[-2] * sizes[-2] + means[-1] * sizes[-1]) / size
            means[-2:] = [merged]
            sizes[-2:] = [size]
    return np.repeat(np.asarray(means, dtype=np.float64), sizes)


def _first_at_or_below(times: Sequence[float], curve: FloatArray) -> float | None:
    below = np.nonzero(curve <= 0.5)[0]
    return float(times[int(below[0])]) if below.size else None


def _floats(values: FloatArray) -> tuple[float, ...]:
    return tuple(float(x) for x in values)
