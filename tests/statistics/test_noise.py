"""noisy_release: the Gaussian noise the layout prescribes, and suppression on noisy values only."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest

from agent.packages.manifest import TaskKind, served_kinds
from agent.packages.plan import AnalysisPlan
from agent.packages.release_layout import COUNT, SURVIVAL_EXITS, ReleaseLayout, layout
from agent.statistics.tables import noisy_release

from .helpers import exact_blocks, plan_of

PLAN = plan_of(
    {
        "strata": [
            {"column": "arm", "categories": ["a", "b", "c", "d"]},
            {"column": "site", "categories": [1, 2, 3, 4]},
        ],
        "variables": [
            {"column": "age", "kind": "numeric", "bounds": [20, 80], "bins": [20, 50, 80]},
            {"column": "grade", "kind": "categorical", "categories": ["I", "II"]},
        ],
        "survival": {"time_column": "time", "event_column": "event", "grid": [10, 20]},
        "model": {"family": "logistic", "outcome": "died", "covariates": ["age", "grade"]},
    }
)


def zeros(release: ReleaseLayout) -> dict[str, np.ndarray]:
    return {block.name: np.zeros((release.strata, len(block.cells))) for block in release.blocks}


COX_PLAN = plan_of(
    {
        "variables": [{"column": "age", "kind": "numeric", "bounds": [20, 80]}],
        "survival": {"time_column": "time", "event_column": "event", "grid": [10, 20]},
        "model": {"family": "cox", "covariates": ["age"]},
    }
)


# Weighted: per arm (8 strata for describe and survival), weighted twins of the blocks.
WEIGHTED_PLAN = plan_of(
    {
        "strata": [{"column": "site", "categories": [1, 2, 3, 4]}],
        "variables": [
            {"column": "treated", "kind": "categorical", "categories": [False, True]},
            {"column": "age", "kind": "numeric", "bounds": [20, 80], "bins": [20, 50, 80]},
            {"column": "grade", "kind": "categorical", "categories": ["I", "II"]},
        ],
        "survival": {"time_column": "time", "event_column": "event", "grid": [10, 20]},
        "model": {"family": "cox", "covariates": ["treated"]},
        "weighting": {"treatment": "treated", "covariates": ["age", "grade"], "estimand": "ate", "max_weight": 8},
    }
)


@pytest.mark.parametrize(
    ("plan", "kind"),
    [
        *((PLAN, kind) for kind in served_kinds(PLAN)),
        (COX_PLAN, TaskKind.DP_GLM),
        *((WEIGHTED_PLAN, kind) for kind in served_kinds(WEIGHTED_PLAN)),
    ],
)
def test_the_noise_has_the_layouts_standard_deviation(plan: AnalysisPlan, kind: TaskKind) -> None:
    """Also for a Cox release, whose blocks share the budget unequally, and a weighted plan's."""
    release = layout(plan, kind)
    rng = np.random.default_rng(2026)
    draws: dict[str, list[float]] = {block.name: [] for block in release.blocks}
    # 16 strata give 16 draws per cell and release; dp_glm's one stratum needs 16 times the releases.
    for _ in range(-(-400 * 16 // release.strata)):
        released = noisy_release(zeros(release), release, noise_multiplier=1.7, min_cell_size=0, rng=rng)
        for name, value in released.items():
            draws[name.split("[")[0]].append(value)
    for block in release.blocks:
        values = np.asarray(draws[block.name])
        expected = release.noise_std(block, 1.7)
        # >= 6400 draws per block: the sample sd is within 2% of the true one (about 3 sd of it).
        assert values.size >= 6400
        assert abs(values.std() / expected - 1) < 0.03, (block.name, values.std(), expected)
        assert abs(values.mean()) < 4 * expected / math.sqrt(values.size)


def test_weighted_blocks_spend_one_gaussian_budget() -> None:
    """Whatever the blocks' weights, the release divided by each block's noise has L2
    sensitivity 1/σ for one patient (Σ (Δ/sd)² σ² = 1): one Gaussian mechanism at σ. Equal
    weights give σ·√k·Δ; a heavier block gets less noise at the others' expense."""
    equal = layout(PLAN, TaskKind.DP_DESCRIBE)
    heavy = dataclasses.replace(equal.blocks[1], weight=5.0)
    weighted = dataclasses.replace(equal, blocks=(equal.blocks[0], heavy, *equal.blocks[2:]))
    k = len(equal.blocks)
    for release in (equal, weighted):
        spent = math.fsum((b.sensitivity / release.noise_std(b, 1.7)) ** 2 for b in release.blocks) * 1.7**2
        assert spent == pytest.approx(1.0, rel=1e-12)
    assert all(equal.noise_std(b, 1.7) == pytest.approx(1.7 * math.sqrt(k) * b.sensitivity) for b in equal.blocks)
    assert weighted.noise_std(heavy, 1.7) < equal.noise_std(equal.blocks[1], 1.7)
    assert weighted.noise_std(weighted.blocks[0], 1.7) > equal.noise_std(equal.blocks[0], 1.7)
    for weight in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="weight must be a positive number"):
            dataclasses.replace(heavy, weight=weight)


def test_noise_is_independent_across_numbers() -> None:
    release = layout(PLAN, TaskKind.DP_DESCRIBE)
    rng = np.random.default_rng(3)
    released = [
        noisy_release(zeros(release), release, noise_multiplier=1.0, min_cell_size=0, rng=rng) for _ in range(500)
    ]
    matrix = np.array([[r[name] for name in release.scalar_names()] for r in released])
    correlation = np.corrcoef(matrix, rowvar=False)
    off_diagonal = correlation[~np.eye(len(correlation), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.25  # 500 draws: |r| of independent pairs stays below ~0.2


@pytest.mark.parametrize("kind", served_kinds(PLAN))
def test_the_keys_are_the_layouts_scalar_names(kind: TaskKind) -> None:
    release = layout(PLAN, kind)
    released = noisy_release(
        zeros(release), release, noise_multiplier=1.0, min_cell_size=5, rng=np.random.default_rng(0)
    )
    assert list(released) == list(release.scalar_names())


def test_sigma_zero_releases_the_exact_values() -> None:
    release = layout(PLAN, TaskKind.DP_DESCRIBE)
    exact = {name: np.arange(values.size, dtype=float).reshape(values.shape) for name, values in zeros(release).items()}
    released = noisy_release(exact, release, noise_multiplier=0.0, min_cell_size=0, rng=np.random.default_rng(0))
    for block in release.blocks:
        for stratum in range(release.strata):
            for cell in range(len(block.cells)):
                assert released[block.scalar_name(stratum, cell)] == exact[block.name][stratum, cell]


def _table() -> pa.Table:
    """Strata of 30, 3 and 0 patients over (arm, site); small cells inside the big stratum."""
    rows = []
    for i in range(30):
        rows.append(("a", 1, 20.0 + i, "I" if i < 26 else "II", 5.0, i % 2 == 0))  # grade II: 4 patients
    for i in range(3):
        rows.append(("b", 2, 40.0 + i, "I", 15.0, True))
    arm, site, age, grade, time, event = zip(*rows, strict=True)
    return pa.table(
        {
            "arm": list(arm),
            "site": list(site),
            "age": list(age),
            "grade": list(grade),
            "time": list(time),
            "event": list(event),
            "died": list(event),
        }
    )


def _stratum(arm: str, site: int) -> int:
    return "abcd".index(arm) * 4 + (site - 1)


def test_small_strata_and_small_cells_are_withheld() -> None:
    release = layout(PLAN, TaskKind.DP_DESCRIBE)
    exact = exact_blocks(PLAN, _table())
    released = noisy_release(
        {b.name: exact[b.name] for b in release.blocks},
        release,
        noise_multiplier=0.0,
        min_cell_size=5,
        rng=np.random.default_rng(0),
    )
    big, small = _stratum("a", 1), _stratum("b", 2)
    for block in release.blocks:
        for cell in range(len(block.cells)):
            # Every number of a stratum below the minimum, in every block.
            assert math.isnan(released[block.scalar_name(small, cell)]), block.name
            # An empty stratum (0 < 5) too.
            assert math.isnan(released[block.scalar_name(_stratum("c", 3), cell)]), block.name
    assert released[f"{COUNT}[{big}][0]"] == 30
    # Cell suppression: grade II has 4 patients (a count table: withheld); "missing" has 0.
    assert released[f"grade.counts[{big}][0]"] == 26
    assert math.isnan(released[f"grade.counts[{big}][1]"])
    assert math.isnan(released[f"grade.counts[{big}][3]"])
    # age.n "missing" is 0 (< 5): that cell only; the sums and histogram stay (present is 30).
    assert released[f"age.n[{big}][0]"] == 30
    assert math.isnan(released[f"age.n[{big}][1]"])
    assert released[f"age.sum[{big}][0]"] == pytest.approx(sum(20.0 + i - 50 for i in range(30)))
    # A histogram is withheld with its stratum only: its bins (30 and 0 patients) stay.
    assert released[f"age.histogram[{big}][0]"] == 30
    assert released[f"age.histogram[{big}][1]"] == 0


def test_a_withheld_present_count_withholds_the_variables_sums_and_histogram() -> None:
    release = layout(PLAN, TaskKind.DP_DESCRIBE)
    exact = {name: values.copy() for name, values in zeros(release).items()}
    exact[COUNT][:, 0] = 100.0
    exact["age.n"][:, :] = [97.0, 3.0]  # present 97, missing 3
    exact["age.n"][5, :] = [3.0, 97.0]  # stratum 5: present 3
    exact["age.sum"][:, 0] = 12.0
    exact["age.sumsq"][:, 0] = 40.0
    exact["age.histogram"][:, :] = [50.0, 47.0]
    exact["grade.counts"][:, :] = [60.0, 30.0, 10.0, 0.0]
    released = noisy_release(exact, release, noise_multiplier=0.0, min_cell_size=10, rng=np.random.default_rng(0))
    for name in ("age.sum", "age.sumsq"):
        assert math.isnan(released[f"{name}[5][0]"])
        assert released[f"{name}[4][0]"] == exact[name][4, 0]
    assert math.isnan(released["age.histogram[5][0]"]) and math.isnan(released["age.histogram[5][1]"])
    assert released["age.n[5][1]"] == 97
    # A withheld "missing" count (3 < 10) withholds only itself.
    assert math.isnan(released["age.n[4][1]"]) and released["age.sum[4][0]"] == 12
    # The other variables of stratum 5 are not touched.
    assert released["grade.counts[5][0]"] == 60 and released[f"{COUNT}[5][0]"] == 100


def test_survival_strata_are_sized_by_their_exits() -> None:
    release = layout(PLAN, TaskKind.DP_SURVIVAL)
    exact = {SURVIVAL_EXITS: np.zeros((16, 7))}
    exact[SURVIVAL_EXITS][0] = [1, 1, 1, 1, 1, 1, 0]  # 6 patients: below 8
    exact[SURVIVAL_EXITS][1] = [2, 0, 3, 0, 1, 2, 1]  # 9 patients, every cell below 8: kept
    released = noisy_release(exact, release, noise_multiplier=0.0, min_cell_size=8, rng=np.random.default_rng(0))
    assert all(math.isnan(released[f"{SURVIVAL_EXITS}[0][{c}]"]) for c in range(7))
    assert [released[f"{SURVIVAL_EXITS}[1][{c}]"] for c in range(7)] == [2, 0, 3, 0, 1, 2, 1]


def test_minimum_zero_withholds_nothing() -> None:
    release = layout(PLAN, TaskKind.DP_DESCRIBE)
    released = noisy_release(
        zeros(release), release, noise_multiplier=0.0, min_cell_size=0, rng=np.random.default_rng(0)
    )
    assert not any(math.isnan(v) for v in released.values())


def test_suppression_reads_the_noisy_values_not_the_exact_ones() -> None:
    # Every stratum has exactly 20 patients; with noise about half fall below 20 and are
    # withheld: exactly those whose noisy count (seen with the minimum off) is below 20.
    release = layout(PLAN, TaskKind.DP_DESCRIBE)
    exact = zeros(release)
    exact[COUNT][:, 0] = 20.0
    exact["grade.counts"][:, 0] = 20.0
    seen = noisy_release(exact, release, noise_multiplier=0.5, min_cell_size=0, rng=np.random.default_rng(9))
    released = noisy_release(exact, release, noise_multiplier=0.5, min_cell_size=20, rng=np.random.default_rng(9))
    below = [seen[f"{COUNT}[{s}][0]"] < 20 for s in range(16)]
    assert 0 < sum(below) < 16
    for stratum in range(16):
        withheld = math.isnan(released[f"{COUNT}[{stratum}][0]"])
        assert withheld == below[stratum]
        if not withheld:
            assert released[f"{COUNT}[{stratum}][0]"] == seen[f"{COUNT}[{stratum}][0]"]
            # A count cell is withheld on its own noisy value too.
            cell = seen[f"grade.counts[{stratum}][0]"]
            assert math.isnan(released[f"grade.counts[{stratum}][0]"]) == (cell < 20)


def test_bad_arguments_are_refused() -> None:
    release = layout(PLAN, TaskKind.DP_DESCRIBE)
    rng = np.random.default_rng(0)
    for sigma in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="noise_multiplier"):
            noisy_release(zeros(release), release, noise_multiplier=sigma, min_cell_size=0, rng=rng)
    with pytest.raises(ValueError, match="min_cell_size"):
        noisy_release(zeros(release), release, noise_multiplier=1.0, min_cell_size=-1, rng=rng)
    missing = zeros(release)
    del missing["age.sum"]
    with pytest.raises(ValueError, match="blocks"):
        noisy_release(missing, release, noise_multiplier=1.0, min_cell_size=0, rng=rng)
    wrong = zeros(release)
    wrong["age.sum"] = np.zeros((16, 2))
    with pytest.raises(ValueError, match="shape"):
        noisy_release(wrong, release, noise_multiplier=1.0, min_cell_size=0, rng=rng)
    infinite = zeros(release)
    infinite["age.sum"][3, 0] = math.inf
    with pytest.raises(ValueError, match="not finite"):
        noisy_release(infinite, release, noise_multiplier=1.0, min_cell_size=0, rng=rng)


def test_a_cohort_below_the_minimum_is_withheld_on_its_noisy_size() -> None:
    """The cohort minimum looks at the noisy total (post-processing), never at the exact one: with
    noise, an exact total just above the minimum is sometimes withheld and one just below it
    sometimes released; without noise it is a plain threshold."""
    release = layout(PLAN, TaskKind.DP_SURVIVAL)
    size = release.size_block

    def released(total: int, sigma: float, rng: np.random.Generator) -> bool:
        exact = zeros(release)
        exact[size.name][0, 0] = float(total)  # every patient in one cell of one stratum
        values = noisy_release(exact, release, noise_multiplier=sigma, min_cell_size=0, rng=rng, min_cohort_size=20)
        return not all(math.isnan(v) for v in values.values())

    rng = np.random.default_rng(7)
    assert not released(19, 0.0, rng) and released(20, 0.0, rng)
    above = [released(21, 1.0, rng) for _ in range(400)]
    below = [released(19, 1.0, rng) for _ in range(400)]
    assert 0 < sum(below) < sum(above) < 400
