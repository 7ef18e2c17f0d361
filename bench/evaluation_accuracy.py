"""How close the DP AUC and calibration-in-the-large from the agents' noisy score histograms come to the exact ones.

    PYTHONPATH=sponsor .venv/bin/python bench/evaluation_accuracy.py [--draws 200] [--epsilons 1,3,8]
        [--bins 10,20] [--bootstrap 300] [--datasets breast_cancer,fair]

A logistic model is fitted without privacy (scikit-learn, C = 1 by default, --C) on the
pooled patients of a dataset; the point is evaluating a given model, not training one. The
patients are split at random into three hospitals (one fixed split per dataset). Each hospital evaluates the
model with the agent's own code: the zoo's logistic regression built with ``score_bins=K``
(its eval graph also outputs a histogram of the predicted probability in K equal-width bins
per outcome, one metric group), packaged and compiled as a hospital would
(``CompiledWrapper(eval, manifest, EVALUATION)``), released by ``agent.runtime.tasks.dp_evaluate``
at q = 1 with a noise multiplier σ calibrated so that the one release costs ε at δ = 1e-5
for that hospital (the agent's PLD accountant on ``Mechanism.dp_evaluate(σ)``, i.e. one
unsampled Gaussian release, no noisy count; bisection). The noise SD of one cell is
σ·``manifest.metric_noise_scales()`` = σ·√4 (the histogram is one block, loss, correct and
brier three more). The sponsor adds the three sites' cells into the [2, K] histogram, pools
the cell SD (``pooled_sd``: σ·2·√3) and reads them as the coordinator does
(``ScoreHistogram.figures``, edge_sponsor.coordinator.score_evaluation): the AUC of the
cells as released, negative ones included, clamped into [0, 1], and calibration-in-the-
large, each with its bootstrap DP error. Per (dataset, K, ε), over ``draws`` releases:

* ``AUC``: the exact AUC on the continuous scores (sklearn's roc_auc_score); ``binned``: the
  exact AUC of the noiseless histogram (the agent's path at σ = 0, checked against a direct
  NumPy binning and against roc_auc_score on the bin indices; the run stops if they disagree);
* ``DP med``: the median DP AUC; ``|err| med``/``p90``: of |DP AUC - exact AUC (continuous)|;
  ``bias``: median DP AUC - binned (what the noise does, apart from the binning);
* ``SD r/e``: the mean reported DP SD over the SD of the DP AUC over draws (1 when the
  error bar is honest, below 1 when it understates the noise);
* ``cov95``: how often the reported 95 % interval (the bootstrap's percentile interval) holds
  the binned exact AUC, the only thing the noise interval can hold (nominal 95 %);
* the same for calibration-in-the-large (observed rate - mean predicted, in percentage
  points; the histogram predicts each bin's midpoint, so ``binned`` differs from the exact
  mean(y) - mean(p) by the binning).

Datasets: scikit-learn's breast cancer (569 patients, 30 features standardised with the
pooled mean and SD; positive = malignant, 212, i.e. sklearn's target flipped) and statsmodels'
fair (6366 women, positive = any affair, 2053; rate_marriage, age, yrs_married, educ,
religious as numeric columns, standardised).

Measured (200 draws, 300 bootstrap draws, seed 2026, C = 1, 2 slow cores, 45 s):
σ = 3.73 at ε = 1, 1.39 at ε = 3, 0.60 at ε = 8 (one release at q = 1, δ = 1e-5); the cell SD of one
site is σ·2 (four noise blocks), pooled over three sites σ·2·√3: 12.9, 4.82, 2.08 patients.
Without noise the agent's histogram equals the NumPy binning cell for cell, and its AUC the
Mann-Whitney AUC of the bin indices.

* **breast cancer (190 patients a hospital), a model that nearly separates the classes**
  (AUC 0.9974; binned 0.9965 / 0.9964 at K = 10 / 20; 6 / 16 cells empty, nearly all
  patients in the two extreme bins). Read as released, the DP AUC's 95 % interval holds the
  binned AUC in 94 to 99 % of releases at every ε and K; median |DP AUC - exact| 0.003,
  p90 0.049 / 0.059 at ε = 1, 0.020 / 0.022 at ε = 3, 0.009 / 0.008 at ε = 8. Its reported
  SD is conservative here (1.4 to 2.6 times the spread of the clamped estimates at K = 10,
  up to 8 at K = 20, ε = 1): the estimate is clamped at 1, the bootstrap is not. With the
  negative cells taken as 0 instead (the first version of this reading), every empty
  cell's noise became mass that pulled the AUC towards 0.5: median 0.972 / 0.944 at ε = 1
  and coverage 30 / 66 / 88 % (K = 10; ε = 1 / 3 / 8), 0 / 6 / 48 % (K = 20), which is why
  the coordinator reads the cells as released. Calibration-in-the-large (a ratio of sums)
  is honest (coverage 92 to 95 %, SD ratio 0.94 to 1.02) but loose: |err| median 4.5 / 6.2
  points at ε = 1 (p90 9.8 / 13.4), 1.5 / 2.1 at ε = 3, 0.9 at ε = 8; the binning alone
  moves it by -0.9 / -0.4 points (bin midpoints as predictions; exact 0.00, the fit has an
  intercept).
* **fair (2122 patients a hospital): usable at every ε.** A weak model (AUC 0.7425; binned
  0.7361 / 0.7412, 0 / 3 cells empty). |DP AUC - exact| median 0.007 / 0.009 at ε = 1 (p90
  0.016 / 0.020), 0.006 / 0.003 at ε = 3, 0.006 / 0.002 at ε = 8: at K = 10 the binning's
  -0.006 is most of the error. Bias at most 0.001; coverage 92 to 96 %, SD ratio 0.93 to
  1.05. Calibration-in-the-large: |err| 0.3 / 0.4 points at ε = 1, 0.1 at ε = 8; coverage
  92 to 96 %, SD ratio 0.92 to 1.08.

So the figures' error bars are honest (or, near a perfect AUC, conservative) at these
sizes; the precision is the noise's: a few hundred patients a hospital give an AUC to
±0.05 at ε = 1, a few thousand to ±0.02. Fewer bins lose resolution (fair, K = 10: -0.006)
but hold more patients per cell.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sponsor"))

import numpy as np
import numpy.typing as npt
import statsmodels.api as sm
from gaussian_calibration import sigma_for  # bench/, beside this script
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.manifest import Manifest, parse_manifest
from agent.privacy.accounting import PldAccountant
from agent.privacy.mechanism import Mechanism
from agent.runtime.isolation import GraphRole
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import EvaluationSettings, Randomness, dp_evaluate
from edge_sponsor.coordinator.score_evaluation import ScoreHistogram
from edge_sponsor.publisher.packaging import FeatureColumn, complete_manifest, zoo_graphs, zoo_manifest_fields
from edge_sponsor.publisher.zoo import build_logistic_regression, score_histogram
from edge_sponsor.statistics import evaluation
from tests.runtime.helpers import ArrayRowSource

DELTA = 1e-5
SITES = 3
Z95 = 1.959964

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Dataset:
    x: FloatArray
    """Standardised features (pooled mean and SD), one row per patient."""
    y: FloatArray
    """1.0 positive, 0.0 negative."""
    positive: str


def standardised(x: FloatArray) -> FloatArray:
    return np.asarray((x - x.mean(axis=0)) / x.std(axis=0), np.float64)


def breast_cancer() -> Dataset:
    data = load_breast_cancer()
    # sklearn's target is 0 = malignant, 1 = benign: flipped, so that positive = malignant.
    return Dataset(
        standardised(np.asarray(data.data, np.float64)), 1.0 - np.asarray(data.target, np.float64), "malignant"
    )


def fair() -> Dataset:
    frame = sm.datasets.fair.load_pandas().data
    columns = ["rate_marriage", "age", "yrs_married", "educ", "religious"]
    x = standardised(frame[columns].to_numpy(np.float64))
    return Dataset(x, (frame["affairs"] > 0).to_numpy(np.float64), "any affair")


DATASETS: dict[str, Callable[[], Dataset]] = {"breast_cancer": breast_cancer, "fair": fair}


def model_manifest(num_features: int, bins: int) -> tuple[Manifest, bytes]:
    """The zoo's logistic regression with a K-bin score histogram: its manifest and eval graph."""
    model = build_logistic_regression(num_features, score_bins=bins)
    graphs = zoo_graphs(model)
    features = [FeatureColumn(f"f{i}", "float64") for i in range(num_features)]
    fields = zoo_manifest_fields(
        model, name="bench/evaluation", version="1.0.0", publisher="bench", features=features, label_columns=["label"]
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, graphs))))
    return manifest, graphs["eval"]


def cell_sd_per_sigma(manifest: Manifest, bins: int) -> float:
    """The noise SD of one histogram cell per unit of σ (the same for every cell: one group)."""
    names = [metric.name for metric in manifest.metrics]
    scales = manifest.metric_noise_scales()
    values = {scales[names.index(name)] for name in score_histogram.cell_names(bins)}
    if len(values) != 1:
        raise SystemExit(f"the histogram's cells have different noise scales: {sorted(values)}")
    return values.pop()


def calibrate(epsilon: float, accountant: PldAccountant) -> float:
    """The σ at which one dp_evaluate release at q = 1 (no noisy count) costs ``epsilon`` at DELTA."""
    sigma = sigma_for(epsilon, 1, accountant, delta=DELTA, high=1000.0)
    # sigma_for accounts Mechanism(q=1, σ, steps=1): exactly what dp_evaluate charges.
    if Mechanism.dp_evaluate(sigma, 1.0, None) != Mechanism(sampling_rate=1.0, noise_multiplier=sigma, steps=1):
        raise SystemExit("dp_evaluate is no longer accounted as one Gaussian release at q = 1")
    return sigma


def numpy_histogram(x: FloatArray, y: FloatArray, params: dict[str, npt.NDArray[np.float32]], bins: int) -> FloatArray:
    """The [2, K] histogram binned directly: float32 score as the graph computes it, p in float64."""
    z = (x.astype(np.float32) @ params["w"] + params["b"]).astype(np.float64)
    p = np.exp(np.minimum(z, 0.0)) / (1.0 + np.exp(-np.abs(z)))
    index = np.minimum(np.floor(p * bins), bins - 1).astype(np.int64)
    hist = np.zeros((2, bins))
    np.add.at(hist, ((y > 0.5).astype(np.int64), index), 1.0)
    return hist


@dataclass
class Draws:
    estimate: list[float]
    dp_sd: list[float]
    covered: list[bool]

    def summary(self, exact: float, binned: float) -> str:
        values = np.array(self.estimate)
        error = np.abs(values - exact)
        spread = float(np.std(values, ddof=1))
        ratio = float(np.mean(self.dp_sd)) / spread if spread > 0 else float("nan")
        return (
            f"{binned:>8.4f}{np.median(values):>9.4f}{np.median(error):>9.4f}{np.quantile(error, 0.9):>8.4f}"
            f"{np.median(values) - binned:>+9.4f}{ratio:>8.2f}{np.mean(self.covered):>7.0%}"
        )


def record(draws: Draws, estimate: evaluation.NoisyEstimate, truth: float) -> None:
    draws.estimate.append(estimate.estimate)
    draws.dp_sd.append(estimate.dp_sd)
    draws.covered.append(estimate.lower <= truth <= estimate.upper)


CITL = functools.partial(evaluation.calibration_in_the_large, low=0.0, high=1.0)


@dataclass(frozen=True)
class Evaluation:
    """One dataset's model, evaluated by three hospitals with the agent's dp_evaluate."""

    data: Dataset
    params: dict[str, npt.NDArray[np.float32]]
    parts: list[npt.NDArray[np.int64]]
    sites: list[ArrayRowSource]
    probability: FloatArray
    """The model's predicted probability per patient (float32 score, as the graph computes it)."""

    @classmethod
    def of(cls, data: Dataset, c: float, seed: int) -> Evaluation:
        fit = LogisticRegression(C=c, max_iter=100_000, tol=1e-10).fit(data.x, data.y)
        params = {"w": fit.coef_[0].astype(np.float32), "b": np.asarray(fit.intercept_[0], np.float32)}
        z = (data.x.astype(np.float32) @ params["w"] + params["b"]).astype(np.float64)
        probability = 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))
        order = np.random.default_rng(seed).permutation(len(data.y))
        parts = [np.sort(part) for part in np.array_split(order, SITES)]
        sites = [ArrayRowSource(data.x[part].astype(np.float32), data.y[part].astype(np.float32)) for part in parts]
        return cls(data, params, parts, sites, probability)

    def released(self, wrapper: CompiledWrapper, bins: int, sigma: float, rng: np.random.Generator) -> FloatArray:
        """The sponsor's [2, K] histogram: the three sites' dp_evaluate cells, added."""
        settings = EvaluationSettings(noise_multiplier=sigma, sampling_rate=1.0)
        randomness = Randomness(noise=rng)
        hists = [
            score_histogram.histogram(
                dp_evaluate(wrapper, rows, self.params, settings, randomness=randomness).sums, bins
            )
            for rows in self.sites
        ]
        return np.asarray(np.sum(hists, axis=0), np.float64)

    def exact_histogram(self, name: str, wrapper: CompiledWrapper, bins: int) -> FloatArray:
        """The agent's histogram at σ = 0, checked against NumPy's binning and the bins' Mann-Whitney AUC."""
        hist = self.released(wrapper, bins, 0.0, np.random.default_rng(0))
        data = self.data
        direct = np.sum([numpy_histogram(data.x[p], data.y[p], self.params, bins) for p in self.parts], axis=0)
        if not np.array_equal(hist, direct):
            raise SystemExit(f"{name}, K = {bins}: the agent's σ = 0 histogram differs from NumPy's:\n{hist}\n{direct}")
        index = np.minimum(np.floor(self.probability * bins), bins - 1)
        if abs(evaluation.auc(hist) - float(roc_auc_score(data.y, index))) > 1e-12:
            raise SystemExit(f"{name}, K = {bins}: the histogram's AUC is not the bins' Mann-Whitney AUC")
        return hist


def summarise(
    evaluated: Evaluation,
    wrapper: CompiledWrapper,
    bins: int,
    exact_hist: FloatArray,
    *,
    epsilon: float,
    sigma: float,
    sd: float,
    args: argparse.Namespace,
    seed: list[int],
) -> tuple[str, str]:
    """``draws`` releases at σ: one AUC row and one calibration-in-the-large row of the tables."""
    noise_rng = np.random.default_rng([*seed, 0])
    binned_auc, binned_citl = evaluation.auc(exact_hist), CITL(exact_hist)
    auc_draws, citl_draws = Draws([], [], []), Draws([], [], [])
    undefined = 0
    reading = ScoreHistogram.of(score_histogram.cell_names(bins))
    if reading is None:
        raise SystemExit("the coordinator does not read this histogram")  # unreachable: the zoo names its cells
    for _ in range(args.draws):
        hist = evaluated.released(wrapper, bins, sigma, noise_rng)
        # As the coordinator reads the pooled cells (edge_sponsor.coordinator.score_evaluation).
        cells = dict(zip(reading.cells, hist.ravel().tolist(), strict=True))
        figures = reading.figures(cells, sd, draws=args.bootstrap)
        if set(figures) != {"auc", "calibration_points"}:
            undefined += 1
            continue
        record(auc_draws, figures["auc"], binned_auc)
        record(citl_draws, figures["calibration_points"], binned_citl)
    y, p = evaluated.data.y, evaluated.probability
    exact_auc = float(roc_auc_score(y, p))
    exact_citl = 100.0 * float(np.mean(y) - np.mean(p))
    head = f"{bins:>3}{epsilon:>5g}{sigma:>7.3g}{sd:>8.3g}"
    note = f"  ({undefined} undefined)" if undefined else ""
    return (
        f"{head}{exact_auc:>8.4f}{auc_draws.summary(exact_auc, binned_auc)}{note}",
        f"{head}{exact_citl:>8.2f}{citl_draws.summary(exact_citl, binned_citl)}{note}",
    )


def run_dataset(number: int, name: str, args: argparse.Namespace, sigmas: dict[float, float]) -> None:
    data = DATASETS[name]()
    evaluated = Evaluation.of(data, args.C, args.seed)
    y, p = data.y, evaluated.probability
    sizes = [len(part) for part in evaluated.parts]
    print(
        f"\n== {name}: {len(y)} patients ({int(y.sum())} positive: {data.positive}), {SITES} sites of "
        f"{min(sizes)} to {max(sizes)}, {data.x.shape[1]} features; exact AUC {roc_auc_score(y, p):.4f}, "
        f"calibration-in-the-large {100.0 * float(np.mean(y) - np.mean(p)):+.2f} points"
    )
    rows: list[tuple[str, str]] = []
    for bins in (int(k) for k in args.bins.split(",")):
        manifest, graph = model_manifest(data.x.shape[1], bins)
        wrapper = CompiledWrapper(graph, manifest, GraphRole.EVALUATION)
        per_sigma = cell_sd_per_sigma(manifest, bins)
        exact_hist = evaluated.exact_histogram(name, wrapper, bins)
        print(
            f"K = {bins}: binned AUC {evaluation.auc(exact_hist):.4f}, calibration-in-the-large "
            f"{CITL(exact_hist):+.2f} points; {int(np.sum(exact_hist == 0))} of {2 * bins} cells empty; "
            f"cell SD per site σ·{per_sigma:g}"
        )
        for epsilon, sigma in sigmas.items():
            sd = evaluation.pooled_sd([sigma * per_sigma] * SITES)
            seed = [args.seed, number, bins, int(epsilon * 1000)]
            rows.append(
                summarise(
                    evaluated, wrapper, bins, exact_hist, epsilon=epsilon, sigma=sigma, sd=sd, args=args, seed=seed
                )
            )
    columns = f"{'binned':>8}{'DP med':>9}{'|err|med':>9}{'p90':>8}{'bias':>9}{'SD r/e':>8}{'cov95':>7}"
    print(f"AUC\n{'K':>3}{'ε':>5}{'σ':>7}{'cell SD':>8}{'exact':>8}{columns}")
    print("\n".join(auc for auc, _ in rows))
    print(f"calibration-in-the-large, points\n{'K':>3}{'ε':>5}{'σ':>7}{'cell SD':>8}{'exact':>8}{columns}")
    print("\n".join(cal for _, cal in rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--bins", default="10,20")
    parser.add_argument("--bootstrap", type=int, default=300, help="parametric bootstrap draws per release")
    parser.add_argument("--datasets", default="breast_cancer,fair")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--C", type=float, default=1.0, help="scikit-learn's inverse L2 penalty of the (non-private) fit"
    )
    args = parser.parse_args()
    accountant = PldAccountant()
    started = time.perf_counter()
    sigmas = {float(e): calibrate(float(e), accountant) for e in args.epsilons.split(",")}
    for number, name in enumerate(args.datasets.split(",")):
        run_dataset(number, name, args, sigmas)
    print(
        "\nσ per ε (one dp_evaluate release at q = 1, δ = 1e-5): "
        + ", ".join(f"ε = {epsilon:g}: {sigma:.3g}" for epsilon, sigma in sigmas.items())
    )
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
