"""Analysis plans end to end: real agents over mTLS, a real survival dataset (lifelines' gbsg2)
with 1 to 3 rows per patient, signed plan packages, dp_describe, dp_survival and dp_glm tasks.

What is checked on what the daemon really returns and writes: the release is exactly the
plan's; with a tiny noise multiplier its numbers are the pandas ones of one row per
patient; the ε in GetBudget is dp-accounting's for one Gaussian at q = 1; the audit log
records the tasks; and every bad request is refused with a clear status, nothing charged.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_gbsg2
from scipy.special import expit

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.identity.agent_key import AgentKey, generate_key_file
from agent.packages.manifest import TaskKind
from edge_sponsor.cli.main import main as sponsor_main
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError
from edge_sponsor.coordinator.plan_tasks import PlanPackage
from edge_sponsor.publisher.plans import build_plan_package, plan_manifest_fields
from tests.conftest import COORDINATOR_URI, InProcessAgent, Pki, start_in_process, write_config
from tests.packages.package_builders import new_key
from tests.tasks.test_unit_level_budget import independent_epsilon

GRID = [365.0, 730.0, 1095.0, 1460.0, 1825.0, 2190.0]
PLAN: dict[str, Any] = {
    "cohort": [{"column": "age", "op": ">=", "value": 18}],
    "strata": [{"column": "horTh", "categories": ["no", "yes"]}],
    "variables": [
        {"column": "age", "kind": "numeric", "bounds": [20, 90], "bins": [20, 40, 50, 60, 70, 90]},
        {"column": "tgrade", "kind": "categorical", "categories": ["I", "II", "III"]},
    ],
    "survival": {"time_column": "time", "event_column": "cens", "grid": GRID},
}
# The policy below allows it (one task costs ε ≈ 19 of its 100): every number is within 5
# noise SDs of the exact one (describe: count 0.73, age sum 26, sum of squares 900; survival 0.3).
TINY_SIGMA = 0.3


def gbsg2_visits(seed: int, rows: npt.NDArray[np.int64] | None = None) -> pa.Table:
    """gbsg2 (or its ``rows``) with a patient id, each patient's row repeated 1 to 3 times (the repeats
    identical), shuffled."""
    frame = load_gbsg2()
    frame["patient_id"] = [f"p{i:04d}" for i in range(len(frame))]
    if rows is not None:
        frame = frame.iloc[np.sort(rows)]
    repeats = 1 + np.arange(len(frame)) % 3
    visits = frame.loc[frame.index.repeat(repeats)].sample(frac=1.0, random_state=seed)
    return pa.Table.from_pandas(visits.reset_index(drop=True), preserve_index=False)


def policy_text(publisher: AgentKey, *, reviewer: AgentKey | None = None) -> str:
    key = base64.b64encode(publisher.public_bytes).decode()
    reviewers = ""
    if reviewer is not None:
        listed = base64.b64encode(reviewer.public_bytes).decode()
        reviewers = f'[[reviewers]]\nname = "Compliance"\npublic_key = "{listed}"\n'
    require_approval = reviewer is not None
    return f"""
[[coordinators]]
identity = "{COORDINATOR_URI}"
datasets = ["gbsg2", "no-event"]
task_kinds = ["dp_describe", "dp_survival", "dp_evaluate", "dp_glm", "dp_propensity"]

[[datasets]]
id = "*"
epsilon_budget = 100.0
delta = 1e-5
min_cohort_size = 20
require_privacy_unit = true
min_cell_size = 5
exposed_columns = ["age", "horTh", "tgrade", "menostat", "time", "cens"]
forbidden_columns = ["patient_id"]
[datasets.bounds.noise_multiplier]
min = 0.1

[[publishers]]
name = "Acme Pharma"
public_key = "{key}"

{reviewers}
[packages]
require_approval = {"true" if require_approval else "false"}

[limits]
max_concurrent_tasks = 4
task_seconds = 60
"""


class PlanSite:
    def __init__(
        self,
        directory: Path,
        pki: Pki,
        publisher: AgentKey,
        *,
        reviewer: AgentKey | None = None,
        rows: npt.NDArray[np.int64] | None = None,
    ) -> None:
        data = directory / "data"
        data.mkdir(parents=True)
        table = gbsg2_visits(seed=1, rows=rows)
        pq.write_table(table, data / "gbsg2.parquet")
        pq.write_table(table.drop_columns(["cens"]), data / "no-event.parquet")
        datasets = (
            f'\n[[datasets]]\nid = "gbsg2"\npath = "{data / "gbsg2.parquet"}"\n'
            'columns = ["age", "horTh", "tgrade", "menostat", "tsize", "time", "cens"]\nprivacy_unit = "patient_id"\n'
            f'\n[[datasets]]\nid = "no-event"\npath = "{data / "no-event.parquet"}"\n'
            'columns = ["age", "horTh", "tgrade", "time"]\nprivacy_unit = "patient_id"\n'
        )
        policy = policy_text(publisher, reviewer=reviewer)
        # Each hospital its own agent: the coordinator leaves out a second entry for one agent.
        config = write_config(directory, pki, policy=policy, extra=datasets, agent_id=directory.name)
        self.directory = directory
        self.process: InProcessAgent = start_in_process(config)
        self.address = f"127.0.0.1:{self.process.port}"
        self.client = AgentClient(self.address, pki.credentials(), server_name="localhost", timeout=30)

    def close(self) -> None:
        self.client.close()
        self.process.stop()

    def spec(self, digest: str, kind: int, dataset: str = "gbsg2", **hyper: Any) -> pb.TaskSpec:
        values = {"noise_multiplier": TINY_SIGMA, "sampling_rate": 1.0} | hyper
        return pb.TaskSpec(
            kind=kind,  # type: ignore[arg-type]
            package_digest=digest,
            dataset_id=dataset,
            hyperparameters=pb.DPHyperparameters(**values),
            run_id="plan-run",
            purpose="research",
        )

    def audit(self, kind: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for path in sorted((self.directory / "state" / "audit").glob("*.jsonl")):
            entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [entry for entry in entries if entry["kind"] == kind]

    def epsilon_spent(self, dataset: str = "gbsg2") -> float:
        return self.client.get_budget(dataset).epsilon_spent


@pytest.fixture
def publisher() -> AgentKey:
    return new_key()


@pytest.fixture
def site(tmp_path: Path, pki: Pki, publisher: AgentKey) -> Iterator[PlanSite]:
    started = PlanSite(tmp_path, pki, publisher)
    yield started
    started.close()


def plan_package(
    publisher: AgentKey | None, plan: dict[str, Any] = PLAN, version: str = "1.0.0", **fields: Any
) -> bytes:
    manifest = plan_manifest_fields(
        plan,
        name="acme/gbsg2-study",
        version=version,
        publisher="acme",
        noise_multiplier={"min": 0.0, "max": 100.0},
        **fields,
    )
    return build_plan_package(manifest, signers=[publisher] if publisher is not None else [])


def one_row_per_patient() -> pd.DataFrame:
    return load_gbsg2()


def test_describe_releases_the_plan_and_matches_pandas(site: PlanSite, publisher: AgentKey) -> None:
    archive = plan_package(publisher)
    uploaded = site.client.upload_package(archive)
    assert list(uploaded.task_kinds) == ["dp_describe", "dp_survival"]
    assert list(uploaded.parameters) == []
    run = site.client.run_task(site.spec(uploaded.digest, pb.TASK_KIND_DP_DESCRIBE), [], timeout=60)
    package = PlanPackage.from_archive(archive)
    assert package.digest == uploaded.digest
    layout = package.layout(TaskKind.DP_DESCRIBE)
    assert set(run.scalars) == set(layout.scalar_names())

    frame = one_row_per_patient()
    for stratum, arm in enumerate(["no", "yes"]):
        group = frame[frame.horTh == arm]
        assert run.scalars[f"count[{stratum}][0]"] == pytest.approx(len(group), abs=3.7)
        clipped = group.age.clip(20, 90) - 55.0
        assert run.scalars[f"age.sum[{stratum}][0]"] == pytest.approx(clipped.sum(), abs=130)
        assert run.scalars[f"age.sumsq[{stratum}][0]"] == pytest.approx((clipped**2).sum(), abs=4500)
        counts = group.tgrade.value_counts()
        for cell, grade in enumerate(["I", "II", "III"]):
            assert run.scalars[f"tgrade.counts[{stratum}][{cell}]"] == pytest.approx(counts.get(grade, 0), abs=3.7)
    # The ledger charged one Gaussian at q = 1 with the task's σ (accounted on the grid: 3 significant digits).
    assert site.epsilon_spent() == pytest.approx(independent_epsilon([(1.0, TINY_SIGMA, 1)]), rel=1e-6)
    # Audited as any task: the kind, the plan package, σ, the ε charged and what it protects (a patient).
    (started,) = site.audit("task.started")
    (finished,) = site.audit("task.finished")
    assert started["task_kind"] == "dp_describe" and started["package_digest"] == uploaded.digest
    assert started["hyperparameters"] == {"noise_multiplier": TINY_SIGMA, "sampling_rate": 1.0,
                                          "release_noisy_count": False, "release_dropped_units": False}
    assert started["privacy_unit"] == "patient_id" and finished["task_id"] == started["task_id"]
    # What left, block by block (strata by cells), not thousands of scalar names.
    assert finished["released"] == ["count[2][1]", "age.n[2][2]", "age.sum[2][1]", "age.sumsq[2][1]",
                                    "age.histogram[2][5]", "tgrade.counts[2][5]"]


def test_survival_exits_count_each_patient_once(site: PlanSite, publisher: AgentKey) -> None:
    digest = site.client.upload_package(plan_package(publisher)).digest
    run = site.client.run_task(site.spec(digest, pb.TASK_KIND_DP_SURVIVAL), [], timeout=60)
    frame = one_row_per_patient()
    interval = np.searchsorted(np.array(GRID), frame.time.to_numpy(), side="left")
    for stratum, arm in enumerate(["no", "yes"]):
        mine = frame.horTh.to_numpy() == arm
        total = 0.0
        for j in range(len(GRID) + 1):
            in_j = mine & (interval == j)
            events = float(np.sum(in_j & (frame.cens.to_numpy() == 1)))
            censored = float(np.sum(in_j & (frame.cens.to_numpy() == 0)))
            assert run.scalars[f"survival.exits[{stratum}][{2 * j}]"] == pytest.approx(events, abs=1.5)
            assert run.scalars[f"survival.exits[{stratum}][{2 * j + 1}]"] == pytest.approx(censored, abs=1.5)
            total += (
                run.scalars[f"survival.exits[{stratum}][{2 * j}]"]
                + run.scalars[f"survival.exits[{stratum}][{2 * j + 1}]"]
            )
        # Patients, not rows: the repeated rows count once.
        assert total == pytest.approx(int(mine.sum()), abs=5.6)


class Addressed(Protocol):
    address: str


def federation_file(tmp_path: Path, pki: Pki, sites: Sequence[Addressed], dataset: str = "gbsg2") -> Path:
    """A federation file (named like ``dataset``) of ``sites``, "site-0", "site-1", …, each holding ``dataset``."""
    agents = "".join(
        f'[[agents]]\nname = "site-{i}"\naddress = "{site.address}"\ndataset = "{dataset}"\n\n'
        for i, site in enumerate(sites)
    )
    path = tmp_path / "federation.toml"
    path.write_text(
        f'[federation]\nname = "{dataset}"\nca_file = "{pki.path("ca.crt")}"\n'
        f'cert_file = "{pki.path("coordinator.crt")}"\nkey_file = "{pki.path("coordinator.key")}"\n'
        f'server_name = "localhost"\n\n{agents}'
        '[training]\npurpose = "research"\n'
    )
    return path


def test_the_sponsor_pools_three_agents_into_km_curves_and_a_table_one(
    tmp_path: Path, pki: Pki, publisher: AgentKey, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edge-sponsor study survival|describe` against three real agents, each holding a third of gbsg2."""
    frame = load_gbsg2()
    thirds = np.array_split(np.random.default_rng(5).permutation(len(frame)), 3)
    sites = [PlanSite(tmp_path / f"site-{i}", pki, publisher, rows=thirds[i]) for i in range(3)]
    try:
        plan_file = tmp_path / "plan.zip"
        plan_file.write_bytes(plan_package(publisher))
        federation = federation_file(tmp_path, pki, sites)
        km_json, km_html = tmp_path / "km.json", tmp_path / "km.html"
        argv = ["study", "survival", str(federation), "--plan", str(plan_file), "--noise-multiplier", "0.3"]
        assert sponsor_main([*argv, "--json", str(km_json), "--html", str(km_html)]) == 0
        printed = capsys.readouterr().out
        assert printed.count(": ok, ε charged") == 3
        result = json.loads(km_json.read_text())
        strata = {curve["label"]: curve for curve in result["survival"]["strata"]}
        fitter = KaplanMeierFitter()
        for arm in ("no", "yes"):
            group = frame[frame.horTh == arm]
            fitter.fit(group.time, group.cens)
            exact = fitter.survival_function_at_times(GRID).to_numpy()
            got = np.array(strata[f"horTh={arm}"]["curve"]["survival"][1:])  # at times 0, t_1, ..., t_J
            # Noise SD 0.3 per exit count at each site: each point within 4 of the noise SDs the report
            # gives it (0.001 at a year, 0.013-0.015 at six) plus the grid's own discretisation (up to
            # about 0.004). A flat 0.03 was 2 SDs at six years and failed now and then.
            noise_sd = np.sqrt(strata[f"horTh={arm}"]["curve"]["variance_noise"][1:])
            assert np.all(np.abs(got - exact) < 4.0 * noise_sd + 0.005), (got - exact, noise_sd)
        assert "<svg" in km_html.read_text()

        table_json = tmp_path / "table1.json"
        argv = ["study", "describe", str(federation), "--plan", str(plan_file), "--noise-multiplier", "0.3"]
        assert sponsor_main([*argv, "--json", str(table_json)]) == 0
        table = json.loads(table_json.read_text())["table_one"]
        assert table is not None
        # Its pooled mean and SD standardise a model's column: private constants, already paid for.
        model_zip = tmp_path / "model.zip"
        build = ["package", "build", "--model", "logistic", "--features", "age", "--label", "cens"]
        build += ["--standardise", "age", "--standardise-from", str(table_json), "--name", "acme/risk"]
        build += ["--version", "1.0.0", "--publisher", "acme", "--out", str(model_zip)]
        assert sponsor_main(build) == 0
        pooled = next(c for c in table["columns"] if (c["site"], c["stratum"]) == ("pooled", "all"))
        age = next(v for v in pooled["variables"] if v["column"] == "age")
        with zipfile.ZipFile(model_zip) as archive:
            [feature] = json.loads(archive.read("manifest.json"))["inputs"]["features"]
        assert feature["preprocessing"] == {"kind": "standardise", "mean": age["mean"]["value"], "std": age["sd"]}
        assert abs(age["mean"]["value"] - load_gbsg2().age.mean()) < 1.0 and 5 < age["sd"] < 15
        capsys.readouterr()
        categorical = ["tgrade" if arg == "age" else arg for arg in build[:-1]] + [str(tmp_path / "x.zip")]
        assert sponsor_main(categorical) == 2
        assert "Table 1 has no numeric variable 'tgrade'" in capsys.readouterr().err
        assert not (tmp_path / "x.zip").exists()
        # Two tasks at σ 0.3 spent about 38 of each site's 100; one at σ 0.1 (ε 92) would go over: refused first.
        spent = [site.epsilon_spent() for site in sites]
        capsys.readouterr()
        greedy = ["study", "survival", str(federation), "--plan", str(plan_file), "--noise-multiplier", "0.1"]
        assert sponsor_main([*greedy, "--json", str(tmp_path / "greedy.json")]) == 1
        assert "(107 > 100) over the privacy budget or out of its policy; nothing was spent" in capsys.readouterr().err
        assert [site.epsilon_spent() for site in sites] == spent and not (tmp_path / "greedy.json").exists()
        # Bad options are refused before any agent is asked, naming what is at fault.
        capsys.readouterr()
        bad = ["study", "survival", str(federation), "--plan", str(plan_file), "--noise-multiplier", "0", "--json", "x"]
        assert sponsor_main(bad) == 2
        missing = ["study", "survival", str(federation), "--plan", str(tmp_path / "nope.zip"), "--noise-multiplier",
                   "1", "--json", "x"]
        assert sponsor_main(missing) == 2
        errors = capsys.readouterr().err
        assert "--noise-multiplier must be a positive number" in errors and "nope.zip: cannot read" in errors
    finally:
        for started in sites:
            started.close()


def _refusal(site: PlanSite, spec: pb.TaskSpec) -> AgentRpcError:
    with pytest.raises(AgentRpcError) as caught:
        site.client.run_task(spec, [], timeout=60)
    return caught.value


def test_bad_requests_are_refused_and_charge_nothing(site: PlanSite, publisher: AgentKey) -> None:
    digest = site.client.upload_package(plan_package(publisher)).digest
    refused = _refusal(site, site.spec(digest, pb.TASK_KIND_DP_DESCRIBE, sampling_rate=0.5))
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT and "sampling_rate must be 1" in refused.details
    # The event column is absent from this dataset: refused before any number is computed.
    refused = _refusal(site, site.spec(digest, pb.TASK_KIND_DP_SURVIVAL, dataset="no-event"))
    assert "cens" in refused.details
    # A plan reading a column the policy does not expose.
    hidden = dict(PLAN, variables=[{"column": "tsize", "kind": "numeric", "bounds": [0, 120]}])
    other = site.client.upload_package(plan_package(publisher, hidden, "1.0.1", task_kinds=["dp_describe"])).digest
    refused = _refusal(site, site.spec(other, pb.TASK_KIND_DP_DESCRIBE))
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED and "tsize" in refused.details
    # A model kind on a plan package.
    refused = _refusal(site, site.spec(digest, pb.TASK_KIND_DP_EVALUATE))
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT
    # A category of the wrong type for its column (tgrade holds strings).
    typed = dict(PLAN, variables=[{"column": "tgrade", "kind": "categorical", "categories": [1, 2, 3]}])
    wrong = site.client.upload_package(plan_package(publisher, typed, "1.0.3", task_kinds=["dp_describe"])).digest
    refused = _refusal(site, site.spec(wrong, pb.TASK_KIND_DP_DESCRIBE))
    assert refused.code is grpc.StatusCode.FAILED_PRECONDITION and "column 'tgrade'" in refused.details
    assert site.epsilon_spent() == 0.0
    assert site.epsilon_spent("no-event") == 0.0


def test_a_cohort_below_the_minimum_is_withheld_on_its_noisy_size_not_refused(
    site: PlanSite, publisher: AgentKey
) -> None:
    """A refusal decided on the exact size of a cohort the plan's author filters would be a free,
    exact oracle ("do at least 20 patients meet this filter?"), and binary search on a bound
    would read any order statistic. So the task runs, is charged, and withholds everything
    because its noisy cohort size is below the minimum."""
    one = dict(PLAN, cohort=[{"column": "age", "op": "==", "value": 21}])
    lone = site.client.upload_package(plan_package(publisher, one, "1.0.2")).digest
    run = site.client.run_task(site.spec(lone, pb.TASK_KIND_DP_SURVIVAL), [], timeout=60)
    assert run.scalars and all(np.isnan(value) for value in run.scalars.values())
    assert run.epsilon_charged > 0 and site.epsilon_spent() == pytest.approx(run.budget_epsilon_spent)


def test_unsigned_and_untrusted_plans_are_not_stored(site: PlanSite) -> None:
    for archive, words in ((plan_package(None), "no signature"), (plan_package(new_key()), "not trusted")):
        with pytest.raises(AgentRpcError) as caught:
            site.client.upload_package(archive)
        assert words in caught.value.details
    assert site.client.list_packages() == []


def test_a_plan_runs_only_once_the_reviewer_approved_what_it_releases(
    tmp_path: Path, pki: Pki, publisher: AgentKey
) -> None:
    reviewer_key = tmp_path / "reviewer.key"
    reviewed = PlanSite(tmp_path / "agent", pki, publisher, reviewer=generate_key_file(reviewer_key))
    try:
        digest = reviewed.client.upload_package(plan_package(publisher)).digest
        refused = _refusal(reviewed, reviewed.spec(digest, pb.TASK_KIND_DP_DESCRIBE))
        assert refused.code is grpc.StatusCode.FAILED_PRECONDITION and "awaits approval" in refused.details
        assert reviewed.epsilon_spent() == 0.0

        config = str(reviewed.directory / "agent.toml")
        env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
        pending = subprocess.run(
            [sys.executable, "-m", "agent", "package", "pending", "--config", config],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        ).stdout
        # What the reviewer reads before approving: who is counted and exactly what leaves.
        assert "(analysis plan)" in pending and "cohort:      age >= 18" in pending
        assert "variable:    age: mean and SD within [20, 90] (values clamped), missing, histogram of 5 bins" in pending
        assert "releases:    dp_survival: 30 numbers in 1 block per task" in pending
        approved = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "package",
                "approve",
                digest,
                "--config",
                config,
                "--reviewer-key",
                str(reviewer_key),
                "--reviewer",
                "Dr. Compliance",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert approved.returncode == 0, approved.stderr
        run = reviewed.client.run_task(reviewed.spec(digest, pb.TASK_KIND_DP_SURVIVAL), [], timeout=60)
        assert run.epsilon_charged > 0
    finally:
        reviewed.close()


GLM_PLAN: dict[str, Any] = {
    "cohort": [{"column": "age", "op": ">=", "value": 18}],
    # Pooled by the regression: every patient of the cohort is in it, whatever their arm.
    "strata": [{"column": "horTh", "categories": ["no"]}],
    "variables": [
        {"column": "age", "kind": "numeric", "bounds": [20, 90]},
        {"column": "tgrade", "kind": "categorical", "categories": ["I", "II", "III"]},
        {"column": "time", "kind": "numeric", "bounds": [0, 2000]},
    ],
    "model": {"family": "logistic", "outcome": "cens", "covariates": ["age", "tgrade", "time"]},
}
GLM_KINDS = ["dp_describe", "dp_glm"]
# The design: (intercept), age, tgrade=II, tgrade=III, time.
BETA = np.array([-0.4, 0.3, 0.2, -0.1, 0.8])


def gbsg2_design() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """GLM_PLAN's design rows and outcomes of gbsg2's patients, with pandas (every one is included)."""
    frame = load_gbsg2()
    design = np.column_stack(
        [
            np.ones(len(frame)),
            (frame.age.clip(20, 90) - 55.0) / 35.0,
            frame.tgrade == "II",
            frame.tgrade == "III",
            (frame.time.clip(0, 2000) - 1000.0) / 1000.0,
        ]
    ).astype(float)
    return design, frame.cens.to_numpy(dtype=float)


def test_dp_glm_releases_the_score_and_information_at_the_coefficients_sent(
    site: PlanSite, publisher: AgentKey
) -> None:
    uploaded = site.client.upload_package(plan_package(publisher, GLM_PLAN, task_kinds=GLM_KINDS))
    assert list(uploaded.task_kinds) == GLM_KINDS
    spec = site.spec(uploaded.digest, pb.TASK_KIND_DP_GLM)
    x, y = gbsg2_design()
    rows, columns = np.triu_indices(5)
    # float64 as the coordinator keeps β; float32 is taken too (widened exactly).
    for beta in (BETA, BETA.astype(np.float32)):
        run = site.client.run_task(spec, [("coefficients", beta)], timeout=60)
        package = PlanPackage.from_archive(plan_package(publisher, GLM_PLAN, task_kinds=GLM_KINDS))
        assert set(run.scalars) == set(package.layout(TaskKind.DP_GLM).scalar_names())
        mu = expit(x @ beta.astype(np.float64))
        score = x.T @ (y - mu)
        information = ((x * (mu * (1 - mu))[:, None]).T @ x)[rows, columns]
        # Noise SDs at σ 0.3 with 3 blocks: counts 0.52, score 1.04 (‖x‖ <= 2), information 0.52; 5 SDs.
        assert run.scalars["glm.count[0][0]"] == pytest.approx(len(x), abs=2.6)  # patients, not rows
        assert run.scalars["glm.count[0][1]"] < 5 or np.isnan(run.scalars["glm.count[0][1]"])
        got_score = [run.scalars[f"glm.score[0][{i}]"] for i in range(5)]
        got_information = [run.scalars[f"glm.information[0][{i}]"] for i in range(15)]
        np.testing.assert_allclose(got_score, score, rtol=0, atol=5.2)
        np.testing.assert_allclose(got_information, information, rtol=0, atol=2.6)
    # Two tasks, each one Gaussian at q = 1 with the task's σ.
    assert site.epsilon_spent() == pytest.approx(independent_epsilon([(1.0, TINY_SIGMA, 2)]), rel=1e-6)
    started = site.audit("task.started")
    finished = site.audit("task.finished")
    assert [entry["task_kind"] for entry in started] == ["dp_glm", "dp_glm"]
    assert finished[0]["released"] == ["glm.count[1][2]", "glm.score[1][5]", "glm.information[1][15]"]


def test_a_bad_dp_glm_task_is_refused_and_charges_nothing(site: PlanSite, publisher: AgentKey) -> None:
    digest = site.client.upload_package(plan_package(publisher, GLM_PLAN, task_kinds=GLM_KINDS)).digest
    spec = site.spec(digest, pb.TASK_KIND_DP_GLM)

    def refusal(parameters: list[tuple[str, npt.NDArray[Any]]], task: pb.TaskSpec = spec) -> AgentRpcError:
        with pytest.raises(AgentRpcError) as caught:
            site.client.run_task(task, parameters, timeout=60)
        return caught.value

    # Checked against the plan's model before the task is admitted: nothing is reserved.
    for parameters, words in (
        ([], "the package declares 1 parameters for dp_glm (coefficients float64[5]), the task sent 0"),
        ([("coefficients", np.zeros(4))], "expected coefficients float64[5], got coefficients float64[4]"),
        ([("coefficients", np.zeros((5, 1)))], "got coefficients float64[5, 1]"),
        ([("beta", np.zeros(5))], "expected coefficients float64[5], got beta float64[5]"),
        ([("coefficients", np.zeros(5, dtype=np.int64))], "got coefficients int64[5]"),
    ):
        refused = refusal(parameters)
        assert refused.code is grpc.StatusCode.INVALID_ARGUMENT and words in refused.details, refused.details
    # Values are checked when they have arrived, before a row is read: refunded.
    for bad in (np.array([0.0, np.nan, 0, 0, 0]), np.array([np.inf, 0, 0, 0, 0])):
        refused = refusal([("coefficients", bad)])
        assert refused.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "parameter 'coefficients': holds NaN or infinite values" in refused.details
    failed = site.audit("task.failed")
    assert len(failed) == 2 and not any(entry["charged"] for entry in failed)
    # The other kinds of the package take no coefficients.
    describe = site.spec(digest, pb.TASK_KIND_DP_DESCRIBE)
    refused = refusal([("coefficients", BETA)], describe)
    assert "the package declares 0 parameters for dp_describe (none), the task sent 1" in refused.details
    refused = refusal([("coefficients", BETA)], site.spec(digest, pb.TASK_KIND_DP_GLM, sampling_rate=0.5))
    assert "dp_glm describes the whole cohort: hyperparameters.sampling_rate must be 1" in refused.details
    # A plan without a model offers no dp_glm.
    plain = site.client.upload_package(plan_package(publisher, PLAN, "1.0.1", task_kinds=["dp_describe"])).digest
    refused = refusal([("coefficients", BETA)], site.spec(plain, pb.TASK_KIND_DP_GLM))
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "does not offer dp_glm (it offers dp_describe); it needs the plan's model (plan.model)" in refused.details
    assert site.epsilon_spent() == 0.0
    # A plan whose outcome the dataset lacks is refused naming it, before a number is computed.
    refused = refusal([("coefficients", BETA)], site.spec(digest, pb.TASK_KIND_DP_GLM, dataset="no-event"))
    assert refused.code is grpc.StatusCode.FAILED_PRECONDITION and "column 'cens'" in refused.details
    assert site.epsilon_spent() == 0.0 and site.epsilon_spent("no-event") == 0.0
