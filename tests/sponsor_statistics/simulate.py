"""Exact per-site releases built with pandas (an oracle independent of agent.statistics), and noise.

``exact_blocks`` computes, for one site's patients, every block of a plan's layout the way
agent.packages.release_layout defines them; ``noisy_release`` adds the layout's Gaussian noise and
applies a minimum cell size; ``split_sites`` splits a dataset's patients at random.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from agent.packages.manifest import TaskKind
from agent.packages.plan import AnalysisPlan, CategoricalVariable, NumericVariable
from agent.packages.release_layout import COUNT, SURVIVAL_EXITS, ReleaseLayout, Suppression
from edge_sponsor.statistics.releases import SiteRelease


def split_sites(frame: pd.DataFrame, sites: int, seed: int) -> list[pd.DataFrame]:
    """The patients (rows) split at random into ``sites`` hospitals of near-equal size."""
    order = np.random.default_rng(seed).permutation(len(frame))
    return [frame.iloc[part].reset_index(drop=True) for part in np.array_split(order, sites)]


def _strata(frame: pd.DataFrame, plan: AnalysisPlan) -> pd.Series:
    """Each row's stratum index in release order (last column fastest); -1 outside every stratum."""
    index = pd.Series(0, index=frame.index)
    inside = pd.Series(True, index=frame.index)
    for stratum in plan.strata:
        codes = pd.Series(-1, index=frame.index)
        for position, category in enumerate(stratum.categories):
            codes[frame[stratum.column] == category] = position
        inside &= codes >= 0
        index = index * len(stratum.categories) + codes
    return index.where(inside, -1)


def exact_blocks(frame: pd.DataFrame, plan: AnalysisPlan, layout: ReleaseLayout) -> dict[str, np.ndarray]:
    """Every block of ``layout`` on ``frame`` (one row per patient), exact, [strata, cells]."""
    strata = _strata(frame, plan)
    out: dict[str, np.ndarray] = {b.name: np.zeros((layout.strata, len(b.cells))) for b in layout.blocks}
    for k in range(layout.strata):
        rows = frame[strata == k]
        if layout.kind is TaskKind.DP_SURVIVAL:
            assert plan.survival is not None
            time, event = rows[plan.survival.time_column], rows[plan.survival.event_column]
            usable = time.notna() & event.notna()
            interval = np.searchsorted(np.asarray(plan.survival.grid), time[usable].to_numpy(float), side="left")
            cell = 2 * interval + (event[usable].to_numpy() == 0)
            out[SURVIVAL_EXITS][k] = np.bincount(cell, minlength=len(out[SURVIVAL_EXITS][k]))
            out[SURVIVAL_EXITS][k][-1] = (~usable).sum()
            continue
        out[COUNT][k, 0] = len(rows)
        for variable in plan.variables:
            values = rows[variable.column]
            if isinstance(variable, CategoricalVariable):
                cells = out[f"{variable.column}.counts"][k]
                for position, category in enumerate(variable.categories):
                    cells[position] = (values == category).sum()
                cells[-1] = values.isna().sum()
                cells[-2] = len(values) - cells[:-2].sum() - cells[-1]
                continue
            assert isinstance(variable, NumericVariable)
            present = values.dropna().astype(float).clip(variable.low, variable.high)
            out[f"{variable.column}.n"][k] = (len(present), values.isna().sum())
            out[f"{variable.column}.sum"][k, 0] = (present - variable.centre).sum()
            out[f"{variable.column}.sumsq"][k, 0] = ((present - variable.centre) ** 2).sum()
            if variable.bins:
                edges = np.asarray(variable.bins)
                which = np.clip(np.searchsorted(edges, present.to_numpy(), side="right") - 1, 0, len(edges) - 2)
                out[f"{variable.column}.histogram"][k] = np.bincount(which, minlength=len(edges) - 1)
    return out


def noisy_release(
    site: str,
    exact: dict[str, np.ndarray],
    layout: ReleaseLayout,
    sigma: float,
    rng: np.random.Generator,
    *,
    min_cell_size: float = 0.0,
) -> SiteRelease:
    """``exact`` plus the layout's noise, with the minimum cell size applied to the noisy numbers."""
    scalars: dict[str, float] = {}
    for block in layout.blocks:
        noisy = exact[block.name] + rng.normal(0.0, layout.noise_std(block, sigma), exact[block.name].shape)
        for k in range(layout.strata):
            row = noisy[k].copy()
            if min_cell_size > 0:
                if block.suppression is Suppression.CELL:
                    row[row < min_cell_size] = math.nan
                elif noisy_count(exact, layout, k) < min_cell_size:
                    row[:] = math.nan
            for cell, value in enumerate(row):
                scalars[block.scalar_name(k, cell)] = float(value)
    return SiteRelease(site, scalars, sigma)


def noisy_count(exact: dict[str, np.ndarray], layout: ReleaseLayout, stratum: int) -> float:
    """The stratum's size, the test's stand-in for the agent's noisy count that gates STRATUM blocks."""
    if COUNT in exact:
        return float(exact[COUNT][stratum, 0])
    return float(exact[SURVIVAL_EXITS][stratum].sum())


def releases(
    parts: Sequence[pd.DataFrame],
    plan: AnalysisPlan,
    layout: ReleaseLayout,
    sigma: float,
    seed: int,
    *,
    min_cell_size: float = 0.0,
) -> list[SiteRelease]:
    """One noisy release per site (named site-1, site-2, ...)."""
    rng = np.random.default_rng(seed)
    return [
        noisy_release(
            f"site-{i + 1}", exact_blocks(part, plan, layout), layout, sigma, rng, min_cell_size=min_cell_size
        )
        for i, part in enumerate(parts)
    ]
