"""A synthetic cardiovascular cohort used by the demo and tests.

Synthetic on purpose: the foundation demo must run offline with nothing but
the agent's own dependencies. The federated demo uses a real clinical
dataset instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# patient_id is a direct identifier: present in the file, never exposed.
EXPOSED_COLUMNS = (
    "age",
    "sex",
    "bmi",
    "systolic_bp",
    "ldl_cholesterol",
    "smoker",
    "diabetes",
    "treatment_arm",
    "event_within_5y",
)


def cohort_table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = rng.normal(62, 11, rows).clip(18, 95).round()
    sex = rng.choice(np.array(["female", "male"]), rows)
    bmi = rng.lognormal(np.log(27), 0.18, rows).round(1)
    systolic = rng.normal(135, 18, rows).clip(85, 220).round()
    ldl = rng.normal(3.2, 0.9, rows).clip(0.8, 8.0).round(2)
    smoker = rng.random(rows) < 0.22
    diabetes = rng.random(rows) < 0.18
    treatment = rng.random(rows) < 0.5
    logit = (
        -4.2
        + 0.045 * (age - 60)
        + 0.02 * (systolic - 130)
        + 0.35 * (ldl - 3)
        + 0.6 * smoker
        + 0.5 * diabetes
        + 0.25 * (sex == "male")
        - 0.45 * treatment
    )
    event = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    return pa.table(
        {
            "patient_id": pa.array([f"P{seed:03d}-{i:06d}" for i in range(rows)]),
            "age": pa.array(age.astype(np.int32)),
            "sex": pa.array(sex),
            "bmi": pa.array(bmi),
            "systolic_bp": pa.array(systolic.astype(np.int32)),
            "ldl_cholesterol": pa.array(ldl),
            "smoker": pa.array(smoker),
            "diabetes": pa.array(diabetes),
            "treatment_arm": pa.array(np.where(treatment, "intervention", "control")),
            "event_within_5y": pa.array(event),
        }
    )


def write_cohort(path: Path, rows: int = 4000, seed: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(cohort_table(rows, seed), path)
    return path
