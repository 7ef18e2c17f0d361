"""How close the sponsor's DP Cox model (dp_glm, family cox, stratified by site) comes to the non-private fit.

    .venv/bin/python bench/cox_accuracy.py [--draws 200] [--epsilons 1,3,8] [--rounds 8] [--average-last 3]
        [--datasets rossi,gbsg2] [--treatment-only]

The patients are split at random into three hospitals (one fixed split per dataset). Each
round, each hospital computes its release with the agent's own code (agent.statistics:
patient_table, exact_model_release, noisy_release) at the θ_s = (its baselines, β) the
sponsor sends, with a noise multiplier σ calibrated so that the whole run, ``rounds`` tasks at
q = 1, costs ε at δ = 1e-5 for that hospital (the agent's PLD accountant on
Mechanism(q=1, σ, rounds), bisection). The sponsor pools the releases and steps
(edge_sponsor.statistics.cox: a per-interval profile step from the cold start, then Newton),
averaging the last rounds' one-step estimates; the log hazard ratios on the covariates' own
scale are compared with lifelines' CoxPHFitter(strata=site) on the pooled patients (the
non-private Cox partial-likelihood fit, covariates clamped to the plan's bounds as the agent
clamps them):

* ``|Δ|/SE``: the median over draws of |log HR - log HR_lifelines| in units of lifelines' SE;
* coverage: how often the reported 95 % interval (sampling + noise) holds lifelines' estimate;
* ``SD/SE dp``: the spread of the estimates over draws over the root mean square of the
  reported noise SE (1 when the reported noise SE is right);
* flagged: the share of fits whose report warns (``CoxFit.unreliable``); clamped: the median
  noisy count of patients whose cumulative hazard hit max_cumulative_hazard.

Datasets: lifelines' rossi (432 released prisoners, re-arrest, weekly grid 8 … 52;
treatment fin, with age [17, 45], prio [0, 20], race, wexp, mar, paro; Λmax 2, the plan's
default) and lifelines' gbsg2 (686 breast-cancer patients, recurrence-free survival in days,
yearly grid 365 … 2190 and 2700; treatment horTh, with age [20, 80], tsize [0, 120],
pnodes [0, 20], tgrade I/II/III; Λmax 4: at 2, 7 patients are clamped at the MLE).
``--treatment-only`` fits the treatment alone (R² = 1: every sensitivity but the counts'
and the baseline's shrinks with the number of covariates).

Measured (200 draws, 8 rounds, the last 3 averaged, seed 2026, 3 hospitals; 37 s for the
full models, 33 s treatment-only, run side by side). σ per round 10.6 at ε = 1, 3.93 at
ε = 3, 1.7 at ε = 8.
Without noise (12 rounds) the fit is the piecewise-exponential MLE, within 0.023 SE of
lifelines' on rossi and 0.064 SE on gbsg2 (1 patient clamped at Λmax 4); treatment-only
0.025 and 0.019 SE.

Treatment log HR (|Δ|/SE, coverage of the 95 % interval, SD/SE dp; clamped median):

==================  =====================  =====================  =====================
treatment (model)   ε = 1                  ε = 3                  ε = 8
==================  =====================  =====================  =====================
rossi fin (full)    2.39, 50 %, 2.66; 114  2.57, 48 %, 2.58; 38   2.29, 56 %, 2.39; 16
rossi fin (alone)   2.98, 65 %, 1.94; 37   2.85, 72 %, 1.78; 4    2.14, 88 %, 1.29; 0.1
gbsg2 horTh (full)  3.85, 48 %, 2.57; 61   4.06, 50 %, 2.57; 25   2.95, 68 %, 1.88; 13
gbsg2 horTh (alone) 4.43, 70 %, 1.88; 22   3.59, 76 %, 1.68; 7    2.48, 95 %, 1.05; 2
==================  =====================  =====================  =====================

* **No ε up to 8 gives a usable fit on datasets of this size: every fit is flagged
  unreliable** (noise/information at 2√p in every draw: the profiled β information is at or
  below its noise floor). The full models' other coefficients are as bad (|Δ|/SE 1.2 to 7.5,
  coverage 18 to 61 %, the noise SE understated 2.2 to 3-fold).
* Much of the noise is the baselines' (an estimate from the noise SDs, not measured
  apart): stratified by site, each hospital has one baseline per interval (18 on rossi, 21
  on gbsg2), and each carries noise σ√6·Λmax on its information (8.3 on rossi at ε = 8, 17
  on gbsg2 with Λmax 4) against about 6 (rossi) and 14 (gbsg2) events per site and
  interval. The covariates' block adds σ√6·Λmax·R² per site (R² = 7 and 5 in the full models).
* Only gbsg2's treatment alone at ε = 8 has honest intervals (coverage 95 %, SD/SE 1.05),
  its estimates a median 2.5 of lifelines' SEs from lifelines': the noise SE is about 3
  times the sampling SE.
* Noise throws β far enough that patients hit the cumulative-hazard cap (median 13 to 114
  clamped in the full models), which the fit reports and which exaggerates the hazard ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sponsor"))

import numpy as np
import pandas as pd
import pyarrow as pa
from gaussian_calibration import sigma_for  # bench/, beside this script
from lifelines import CoxPHFitter
from lifelines.datasets import load_gbsg2, load_rossi

from agent.packages.manifest import TaskKind
from agent.packages.plan import AnalysisPlan, CategoricalVariable, NumericVariable, parse_plan
from agent.packages.release_layout import analysed, layout
from agent.privacy.accounting import PldAccountant
from agent.statistics.glm import exact_model_release
from agent.statistics.patients import PatientTable, patient_table
from agent.statistics.tables import noisy_release
from edge_sponsor.statistics import cox

DELTA = 1e-5
SITES = 3
Z = 1.959964


@dataclass(frozen=True)
class Dataset:
    frame: pd.DataFrame
    plan: AnalysisPlan
    treatment: str


def _plan(
    variables: list[dict[str, Any]], time: str, event: str, *, grid: list[float], covariates: list[str], hazard: float
) -> AnalysisPlan:
    return parse_plan(
        {
            "cohort": [],
            "strata": [],
            "variables": [v for v in variables if v["column"] in covariates],
            "survival": {"time_column": time, "event_column": event, "grid": grid},
            "model": {"family": "cox", "covariates": covariates, "max_cumulative_hazard": hazard},
        }
    )


def coarse(grid: list[float], intervals: int | None) -> list[float]:
    """``intervals`` equal-width intervals up to the grid's last time (None: the grid as is)."""
    if intervals is None:
        return grid
    return [round(grid[-1] * (j + 1) / intervals) for j in range(intervals)]


def rossi(treatment_only: bool, intervals: int | None = None) -> Dataset:
    binary = ["fin", "race", "wexp", "mar", "paro"]
    variables = [
        {"column": "age", "kind": "numeric", "bounds": [17, 45]},
        {"column": "prio", "kind": "numeric", "bounds": [0, 20]},
        *({"column": c, "kind": "categorical", "categories": [0, 1]} for c in binary),
    ]
    covariates = ["fin"] if treatment_only else ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
    grid = coarse([8.0, 16.0, 24.0, 32.0, 40.0, 52.0], intervals)
    return Dataset(
        load_rossi(), _plan(variables, "week", "arrest", grid=grid, covariates=covariates, hazard=2.0), "fin=1"
    )


def gbsg2(treatment_only: bool, intervals: int | None = None) -> Dataset:
    variables = [
        {"column": "horTh", "kind": "categorical", "categories": ["no", "yes"]},
        {"column": "age", "kind": "numeric", "bounds": [20, 80]},
        {"column": "tsize", "kind": "numeric", "bounds": [0, 120]},
        {"column": "pnodes", "kind": "numeric", "bounds": [0, 20]},
        {"column": "tgrade", "kind": "categorical", "categories": ["I", "II", "III"]},
    ]
    covariates = ["horTh"] if treatment_only else ["horTh", "age", "tsize", "pnodes", "tgrade"]
    grid = coarse([365.0, 730.0, 1095.0, 1460.0, 1825.0, 2190.0, 2700.0], intervals)
    frame = load_gbsg2()
    for column in ("horTh", "tgrade"):
        frame[column] = frame[column].astype(str)
    return Dataset(frame, _plan(variables, "time", "cens", grid=grid, covariates=covariates, hazard=4.0), "horTh=yes")


DATASETS = {"rossi": rossi, "gbsg2": gbsg2}


def split(data: Dataset, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(data.frame))
    return [np.sort(part) for part in np.array_split(order, SITES)]


def sites_of(data: Dataset, parts: list[np.ndarray]) -> list[PatientTable]:
    plan = analysed(data.plan, TaskKind.DP_GLM)
    return [
        patient_table(
            plan,
            pa.Table.from_pandas(data.frame.iloc[part], preserve_index=False),
            unit_column=None,
            rng=np.random.default_rng(0),
        )
        for part in parts
    ]


def fit_once(
    data: Dataset,
    sites: list[PatientTable],
    sigma: float,
    *,
    rounds: int,
    average: int,
    rng: np.random.Generator,
    options: cox.CoxOptions | None = None,
) -> cox.CoxFit:
    plan = analysed(data.plan, TaskKind.DP_GLM)
    shape = layout(plan, TaskKind.DP_GLM)
    assert plan.model is not None
    design = cox.CoxDesign.of_model(plan.model)
    names = tuple(f"site-{i}" for i in range(len(sites)))

    def one_round(theta: cox.CoxParameters) -> cox.CoxRoundSums:
        parts = []
        for name, patients in zip(names, sites, strict=True):
            exact = exact_model_release(plan, patients, theta.site_vector(name))
            scalars = noisy_release(exact, shape, noise_multiplier=sigma, min_cell_size=0, rng=rng)
            blocks = {
                block.name: [scalars[block.scalar_name(0, cell)] for cell in range(len(block.cells))]
                for block in shape.blocks
            }
            parts.append(cox.site_sums_from_blocks(design, name, blocks, sigma))
        return cox.pool_round(design, parts)

    steps = cox.cox_iterations(design, names, one_round, rounds, options=options)
    return cox.fit_cox(design, steps, last=average, options=options)


def reference(data: Dataset, parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """lifelines' stratified Cox on the pooled patients, covariates clamped and coded as the design
    (per unit of each covariate): its log hazard ratios and SEs, in design-column order."""
    model = data.plan.model
    assert model is not None and model.survival is not None
    columns: dict[str, np.ndarray] = {}
    for variable in model.covariates:
        values = data.frame[variable.column]
        if isinstance(variable, CategoricalVariable):
            for category in variable.categories[1:]:
                columns[f"{variable.column}={category}"] = (values == category).to_numpy(float)
        else:
            assert isinstance(variable, NumericVariable)
            columns[variable.column] = values.clip(variable.low, variable.high).to_numpy(float)
    frame = pd.DataFrame(columns)
    frame["T"] = data.frame[model.survival.time_column].to_numpy(float)
    frame["E"] = data.frame[model.survival.event_column].to_numpy(float)
    site = np.empty(len(frame), dtype=int)
    for index, part in enumerate(parts):
        site[part] = index
    frame["site"] = site
    fitted = CoxPHFitter().fit(frame, "T", "E", strata=["site"])
    names = list(columns)
    return fitted.params_[names].to_numpy(), fitted.standard_errors_[names].to_numpy()


def parse_config(text: str) -> tuple[str, cox.CoxOptions, int | None]:
    """``baseline[:settle[:intervals]]``, e.g. ``proportional:2:4``."""
    parts = text.split(":")
    options = cox.CoxOptions(
        baseline=parts[0], settle=int(parts[1]) if len(parts) > 1 and parts[1] else cox.CoxOptions().settle
    )
    intervals = int(parts[2]) if len(parts) > 2 and parts[2] else None
    return text, options, intervals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--average-last", type=int, default=3)
    parser.add_argument("--datasets", default="rossi,gbsg2")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--treatment-only", action="store_true", help="the treatment as the only covariate")
    parser.add_argument(
        "--configs",
        default="stratified:0,proportional",
        help="comma-separated baseline[:settle[:intervals]] (CoxOptions; intervals: an equal-width grid)",
    )
    parser.add_argument("--all-coefficients", action="store_true", help="every coefficient, not the treatment only")
    args = parser.parse_args()
    accountant = PldAccountant()
    started = time.perf_counter()
    configs = [parse_config(c) for c in args.configs.split(",")]
    for name in args.datasets.split(","):
        print(
            f"\n== {name}{' (treatment alone)' if args.treatment_only else ''}: {args.rounds} rounds, "
            f"the last {args.average_last} averaged, {args.draws} draws"
        )
        print(
            f"  {'config':<22}{'ε':>4}{'coefficient':>14}{'|Δ|/SE':>8}{'cover':>7}{'width':>7}"
            f"{'SD/SE':>7}{'flag':>6}{'clamp':>6}"
        )
        for label, options, intervals in configs:
            data = DATASETS[name](args.treatment_only, intervals)
            parts = split(data, args.seed)
            sites = sites_of(data, parts)
            truth, truth_se = reference(data, parts)
            exact = fit_once(
                data, sites, 0.0, rounds=args.rounds + 4, average=1, rng=np.random.default_rng(0), options=options
            )
            gap = np.abs(np.array([c.estimate for c in exact.original.coefficients]) - truth) / truth_se
            print(
                f"  {label:<22}{'∞':>4}  σ = 0: |log HR - lifelines| max {gap.max():.3f} SE, J = "
                f"{len(data.plan.model.survival.grid) if data.plan.model and data.plan.model.survival else 0}"
            )
            names = exact.names
            for epsilon in (float(e) for e in args.epsilons.split(",")):
                sigma = sigma_for(epsilon, args.rounds, accountant, delta=DELTA, high=1000.0)
                rng = np.random.default_rng([args.seed, int(epsilon * 1000)])
                estimates, se_noise, se_total, flagged, clamped = [], [], [], [], []
                for _ in range(args.draws):
                    result = fit_once(
                        data, sites, sigma, rounds=args.rounds, average=args.average_last, rng=rng, options=options
                    )
                    estimates.append([c.estimate for c in result.original.coefficients])
                    se_noise.append([c.se_noise for c in result.original.coefficients])
                    se_total.append([c.se for c in result.original.coefficients])
                    flagged.append(
                        ("mostly noise" in result.unreliable)
                        + 2 * ("clamped" in result.unreliable)
                        + 4 * (not result.reliable)
                    )
                    clamped.append(result.clamped)
                b, n, t = np.array(estimates), np.array(se_noise), np.array(se_total)
                f = np.array(flagged)
                error = np.median(np.abs(b - truth), axis=0) / truth_se
                covered = (np.abs(b - truth) <= Z * t).mean(axis=0)
                width = np.median(t, axis=0) / truth_se
                spread = b.std(axis=0, ddof=1) / np.sqrt(np.mean(n**2, axis=0))
                for j, column in enumerate(names):
                    if column != data.treatment and not args.all_coefficients:
                        continue
                    print(
                        f"  {label:<22}{epsilon:>4g}{column:>14}{error[j]:>8.2f}{covered[j]:>7.0%}{width[j]:>7.1f}"
                        f"{spread[j]:>7.2f}{np.mean(f >= 4):>6.0%}{np.mean(f % 2 == 1):>6.0%}"
                        f"{np.mean(f % 4 >= 2):>6.0%}"
                        f"{np.median(clamped):>6.0f}"
                    )
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
