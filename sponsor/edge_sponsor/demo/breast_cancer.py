"""The federated demo's hospitals, cut from a real clinical dataset.

The Wisconsin Diagnostic Breast Cancer data (569 fine-needle aspirates, 30
nucleus features, benign or malignant; Street, Wolberg & Mangasarian 1993)
ships with scikit-learn, so the demo runs offline. A quarter of it, stratified,
is held out as an external validation cohort that only the demo (standing in for
a later validation study) looks at. The rest is split across three hospitals
*heterogeneously*, the way case mix differs in practice: a referral oncology
centre sees mostly malignant lesions, a screening programme mostly benign ones,
a general hospital a mix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

LABEL = "malignant"
# One row per patient (each fine-needle aspirate is a different woman): the privacy unit.
PATIENT_ID = "patient_id"

Array = npt.NDArray[np.float64]


class DemoDataError(Exception):
    """The demo's dataset cannot be loaded (scikit-learn missing)."""


@dataclass(frozen=True)
class Hospital:
    name: str
    description: str
    # Share of the training pool's malignant and benign cases this site gets.
    malignant_share: float
    benign_share: float


HOSPITALS = (
    Hospital("st-marys-oncology", "referral oncology centre", 0.60, 0.20),
    Hospital("northside-screening", "breast screening programme", 0.10, 0.50),
    Hospital("riverside-general", "general hospital", 0.30, 0.30),
)


@dataclass(frozen=True)
class Cohorts:
    feature_columns: tuple[str, ...]
    # Per hospital, in HOSPITALS order: features [n, 30] and labels [n] (1 = malignant).
    sites: tuple[tuple[Array, Array], ...]
    train_x: Array
    train_y: Array
    test_x: Array
    test_y: Array
    # Per feature, over the pooled training cases: the package's standardisation constants.
    feature_mean: Array
    feature_std: Array

    def standardised(self, x: Array) -> Array:
        """``x`` as the agent feeds it to the graph (the package's declared standardisation)."""
        return (x - self.feature_mean) / self.feature_std

    def site_table(self, index: int) -> pa.Table:
        x, y = self.sites[index]
        columns: dict[str, Any] = {PATIENT_ID: [f"{HOSPITALS[index].name}-{i:05d}" for i in range(len(y))]}
        columns.update({name: x[:, j] for j, name in enumerate(self.feature_columns)})
        columns[LABEL] = y.astype(np.float32)
        return pa.table(columns)


def snake_case(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _load() -> tuple[Array, Array, list[str]]:
    try:
        from sklearn.datasets import load_breast_cancer  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise DemoDataError(
            "the federated demo needs scikit-learn for its dataset: pip install 'edge-agent-sponsor[demo]'"
        ) from None
    data = load_breast_cancer()
    # scikit-learn codes malignant as 0; the clinical convention is positive = disease.
    return np.asarray(data.data, np.float64), 1.0 - np.asarray(data.target, np.float64), list(data.feature_names)


def split_cohorts(seed: int = 7, test_fraction: float = 0.25, hospitals: Sequence[Hospital] = HOSPITALS) -> Cohorts:
    x, y, names = _load()
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for label in (0.0, 1.0):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(test_fraction * len(members))]] = True
    train_idx = np.flatnonzero(~test)
    assignment = np.empty(len(train_idx), np.int64)
    for label, share_of in ((1.0, "malignant_share"), (0.0, "benign_share")):
        members = rng.permutation(np.flatnonzero(y[train_idx] == label))
        shares = np.array([getattr(h, share_of) for h in hospitals])
        cuts = np.round(np.cumsum(shares / shares.sum()) * len(members)).astype(int)[:-1]
        for site, part in enumerate(np.split(members, cuts)):
            assignment[part] = site
    sites = tuple((x[train_idx][assignment == s], y[train_idx][assignment == s]) for s in range(len(hospitals)))
    return Cohorts(
        feature_columns=tuple(snake_case(n) for n in names),
        sites=sites,
        train_x=x[train_idx],
        train_y=y[train_idx],
        test_x=x[test],
        test_y=y[test],
        feature_mean=x[train_idx].mean(axis=0),
        feature_std=x[train_idx].std(axis=0),
    )
