"""`make demo`: three hospitals, one federated DP model, next to a centralized baseline.

Starts three agents as separate `edge-agent serve` processes on loopback ports,
each with its own production-style agent.toml, policy.toml, identity key and
a hospital's share of the Wisconsin breast-cancer data (edge_sponsor.demo.breast_cancer).
A publisher signs a logistic-regression package; the coordinator dials the
agents with mutual TLS, uploads it and trains with DP-FedSGD; then the demo scores
the exported ONNX model on the held-out cohort beside a non-private model trained
on the pooled data, and shows each hospital's ε and audit log.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

from agent.audit.verify import verify_log
from agent.identity.agent_key import AgentKey, generate_key_file, load_key_file
from agent.identity.development_pki import DEV_COORDINATOR_URI, DevelopmentPki, ensure_development_pki
from edge_sponsor.coordinator.federation import Algorithm, Federation, ServerOptimizerKind, Site, TrainingPlan
from edge_sponsor.coordinator.progress import noisy, observer_for
from edge_sponsor.coordinator.report import RoundRecord, SiteTask
from edge_sponsor.coordinator.study import StudyOutcome, run_study
from edge_sponsor.coordinator.study_package import StudyPackage
from edge_sponsor.coordinator.training import RunObserver
from edge_sponsor.demo.breast_cancer import HOSPITALS, LABEL, PATIENT_ID, Cohorts, split_cohorts
from edge_sponsor.demo.processes import DemoError, sigterm_interrupts, stop_child, wait_for_port
from edge_sponsor.publisher.packaging import FeatureColumn, build_package, zoo_graphs, zoo_manifest_fields
from edge_sponsor.publisher.zoo.logistic import build_logistic_regression

DATASET_ID = "breast-cancer"
PURPOSE = "breast-cancer-malignancy-model"
EPSILON_BUDGET = 10.0
DELTA = 1e-5

# Chosen so that the whole run stays well inside each hospital's ε = 10 budget
# (about 4.6 at δ = 1e-5 with the PLD accountant; see the run report).
DEMO_PLAN = TrainingPlan(
    algorithm=Algorithm.FEDSGD,
    rounds=30,
    clip_norm=1.0,
    noise_multiplier=3.0,
    sampling_rate=0.5,
    server_optimizer=ServerOptimizerKind.ADAM,
    server_learning_rate=0.1,
    evaluate_every=10,
    evaluation_noise_multiplier=5.0,
    evaluation_sampling_rate=1.0,
    quorum=2,
    task_deadline_seconds=60.0,
    max_failed_rounds=3,
    purpose=PURPOSE,
)


@dataclass
class HospitalAgent:
    name: str
    directory: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def audit_dir(self) -> Path:
        return self.directory / "state" / "audit"

    @property
    def ledger(self) -> Path:
        return self.directory / "state" / "privacy-ledger.sqlite"


@dataclass(frozen=True)
class Scores:
    accuracy: float
    auc: float


@dataclass
class FederatedDemoResult:
    workdir: Path
    outcome: StudyOutcome
    federated: Scores
    centralized: Scores
    majority: Scores
    cohorts: Cohorts
    agents: list[HospitalAgent] = field(default_factory=list)


def policy_text(publisher: AgentKey) -> str:
    key = base64.b64encode(publisher.public_bytes).decode()
    return f"""# Demo hospital policy: one coordinator, one dataset, one trusted publisher.
[[coordinators]]
identity = "{DEV_COORDINATOR_URI}"
datasets = ["{DATASET_ID}"]
task_kinds = ["dp_gradient", "dp_local_training", "dp_evaluate"]

[[datasets]]
id = "{DATASET_ID}"
epsilon_budget = {EPSILON_BUDGET}
delta = {DELTA}
min_cohort_size = 50
# Tasks count, sample and protect patients: the dataset must declare its patient column.
require_privacy_unit = true
forbidden_columns = ["{PATIENT_ID}"]
label_columns = ["{LABEL}"]
purposes = ["{PURPOSE}"]

[[publishers]]
name = "Edge Agent demo publisher"
public_key = "{key}"

[packages]
# A real hospital has a compliance officer approve each package first.
require_approval = false

[limits]
max_concurrent_tasks = 4
task_seconds = 120
"""


def agent_toml(
    name: str, directory: Path, pki: DevelopmentPki, data: Path, description: str, *, dataset_id: str = DATASET_ID
) -> str:
    """A site's agent.toml: its own state, identity key and policy, the development PKI, one Parquet dataset."""
    return f"""[agent]
id = "{name}"
state_dir = "{directory / "state"}"

[identity]
key_file = "{directory / "identity.key"}"

[server]
listen = "127.0.0.1:0"
grace_seconds = 5

[tls]
cert_file = "{pki.agent_cert}"
key_file = "{pki.agent_key}"
client_ca_file = "{pki.ca_cert}"

[governance]
policy_file = "{directory / "policy.toml"}"

[logging]
format = "json"

[[datasets]]
id = "{dataset_id}"
path = "{data}"
format = "parquet"
description = "{description}"
privacy_unit = "{PATIENT_ID}"
"""


def build_demo_package(cohorts: Cohorts, publisher: AgentKey) -> bytes:
    # Standardisation constants are part of the signed package. Here they come from
    # the pooled training data for brevity; a real study takes them from published
    # reference values or a DP mean/variance query, never from raw pooled records.
    features = [
        FeatureColumn(name, "float64", "standardise", float(m), float(s))
        for name, m, s in zip(cohorts.feature_columns, cohorts.feature_mean, cohorts.feature_std, strict=True)
    ]
    model = build_logistic_regression(len(features), loss_bound=4.0)
    fields = zoo_manifest_fields(
        model,
        name="edge-agent-demo/breast-cancer-malignancy",
        version="1.0.0",
        publisher="edge-agent-demo",
        features=features,
        label_columns=[LABEL],
        description="Logistic regression: malignant vs benign from 30 FNA nucleus features",
    )
    return build_package(fields, zoo_graphs(model, inference_seed=0), signers=[publisher])


def federation_for(
    agents: Sequence[HospitalAgent], pki: DevelopmentPki, plan: TrainingPlan, source: Path
) -> Federation:
    return Federation(
        name="breast-cancer-demo",
        ca_file=pki.ca_cert,
        cert_file=pki.coordinator_cert,
        key_file=pki.coordinator_key,
        server_name="localhost",
        connect_seconds=20.0,
        sites=tuple(Site(a.name, f"127.0.0.1:{a.port}", DATASET_ID) for a in agents),
        training=plan,
        source=source,
    )


def federation_toml(federation: Federation) -> str:
    plan = federation.training
    lines = [
        "# The demo's federation file: run it again with",
        "#   edge-sponsor coordinate train federation.toml --package package.zip --out run",
        "# against agents started from the hospital directories (edge-agent serve --config",
        "# <hospital>/agent.toml) after updating the addresses below to their new ports.",
        "[federation]",
        f'name = "{federation.name}"',
        f'ca_file = "{federation.ca_file}"',
        f'cert_file = "{federation.cert_file}"',
        f'key_file = "{federation.key_file}"',
        f'server_name = "{federation.server_name}"',
        "",
    ]
    for site in federation.sites:
        lines += [
            "[[agents]]",
            f'name = "{site.name}"',
            f'address = "{site.address}"',
            f'dataset = "{site.dataset}"',
            "",
        ]
    lines.append("[training]")
    for key, value in vars(plan).items():
        if value is None:  # an optional key left out (TOML has no null)
            continue
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        else:
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    return "\n".join(lines) + "\n"


def start_hospital(index: int, root: Path, cohorts: Cohorts, pki: DevelopmentPki, publisher: AgentKey) -> HospitalAgent:
    hospital = HOSPITALS[index]
    directory = root / hospital.name
    (directory / "data").mkdir(parents=True)
    data = directory / "data" / f"{DATASET_ID}.parquet"
    pq.write_table(cohorts.site_table(index), data)
    generate_key_file(directory / "identity.key")
    (directory / "policy.toml").write_text(policy_text(publisher))
    config = directory / "agent.toml"
    description = f"Breast fine-needle aspirates at {hospital.name} ({hospital.description})"
    config.write_text(agent_toml(hospital.name, directory, pki, data, description))
    log_path = directory / "agent.log"
    command = [sys.executable, "-m", "agent", "serve", "--config", str(config), "--port-file", str(directory / "port")]
    with log_path.open("wb") as log:
        # Own session: Ctrl-C reaches only the demo, which stops the agents in order.
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True
        )
    return HospitalAgent(hospital.name, directory, process, log_path)


def _auc(labels: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]) -> float:
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415 (optional dependency)

    return float(roc_auc_score(labels, scores))


def score_onnx(model_path: Path, cohorts: Cohorts) -> Scores:
    import onnxruntime as ort  # noqa: PLC0415 (heavy; only the demo's summary needs it here)

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    # The exported model takes the raw columns by name and standardises them as the agent does.
    columns = {name: cohorts.test_x[:, j].astype(np.float64) for j, name in enumerate(cohorts.feature_columns)}
    (probability,) = session.run(None, columns)
    p = np.asarray(probability, np.float64)
    return Scores(float(np.mean((p > 0.5) == (cohorts.test_y > 0.5))), _auc(cohorts.test_y, p))


def centralized_baseline(cohorts: Cohorts) -> Scores:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 (optional dependency)

    model = LogisticRegression(max_iter=2000).fit(cohorts.standardised(cohorts.train_x), cohorts.train_y)
    p = model.predict_proba(cohorts.standardised(cohorts.test_x))[:, 1]
    return Scores(float(np.mean((p > 0.5) == (cohorts.test_y > 0.5))), _auc(cohorts.test_y, p))


def majority_baseline(cohorts: Cohorts) -> Scores:
    majority = float(np.mean(cohorts.train_y) > 0.5)
    return Scores(float(np.mean(cohorts.test_y == majority)), 0.5)


def run_federated_demo(
    out: TextIO = sys.stdout,
    *,
    workdir: Path | None = None,
    plan: TrainingPlan = DEMO_PLAN,
    kill_after_round: tuple[str, int] | None = None,
) -> FederatedDemoResult:
    """Runs the demo; ``kill_after_round`` = (hospital, r) SIGKILLs that agent once round r is done
    (the tests use it to show the run going on without a site)."""
    with sigterm_interrupts():
        root = workdir or Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
        try:
            return _run(out, root, plan, kill_after_round)
        except BaseException:
            # A run that did not finish has nothing worth reading, but a CA key.
            if workdir is None:
                shutil.rmtree(root, ignore_errors=True)
            raise


@dataclass(frozen=True)
class DemoSetup:
    """Everything the demo prepares before any agent starts."""

    root: Path
    cohorts: Cohorts
    pki: DevelopmentPki
    publisher: AgentKey
    package: StudyPackage
    package_path: Path


def prepare(root: Path) -> DemoSetup:
    cohorts = split_cohorts()
    root.mkdir(parents=True, exist_ok=True)
    pki, _ = ensure_development_pki(root / "pki")
    publisher = generate_key_file(root / "publisher.key")
    archive = build_demo_package(cohorts, publisher)
    package_path = root / "package.zip"
    package_path.write_bytes(archive)
    return DemoSetup(root, cohorts, pki, publisher, StudyPackage.from_archive(archive), package_path)


@contextmanager
def running_hospitals(setup: DemoSetup, out: TextIO) -> Iterator[list[HospitalAgent]]:
    """The three hospital agents, serving; stopped with SIGTERM (in order) on exit."""
    agents: list[HospitalAgent] = []
    try:
        for index in range(len(HOSPITALS)):
            agents.append(start_hospital(index, setup.root, setup.cohorts, setup.pki, setup.publisher))
        for agent in agents:
            agent.port = wait_for_port(
                agent.directory / "port", agent.process, timeout=60, name=f"agent {agent.name}", log=agent.log_path
            )
        yield agents
    finally:
        _stop_all(agents, out)


def _run(out: TextIO, root: Path, plan: TrainingPlan, kill_after_round: tuple[str, int] | None) -> FederatedDemoResult:
    started = time.monotonic()
    setup = prepare(root)
    cohorts, package = setup.cohorts, setup.package
    print(f"Edge Agent federated demo — working directory {setup.root}", file=out)
    print(
        f"  data: Wisconsin Diagnostic Breast Cancer (scikit-learn), {len(cohorts.train_y)} training and "
        f"{len(cohorts.test_y)} held-out cases",
        file=out,
    )
    for hospital, (_features, y) in zip(HOSPITALS, cohorts.sites, strict=True):
        print(
            f"  {hospital.name:<20} {len(y):>4} cases, {np.mean(y):5.1%} malignant  ({hospital.description})", file=out
        )
    print(f"  package: {package.manifest.name} {package.manifest.version} {package.digest[:19]}…, signed", file=out)
    with running_hospitals(setup, out) as agents:
        print("  agents: " + ", ".join(f"{a.name} on 127.0.0.1:{a.port}" for a in agents), file=out)
        federation = federation_for(agents, setup.pki, plan, setup.root / "federation.toml")
        (setup.root / "federation.toml").write_text(federation_toml(federation))
        print(
            f"\nDP-FedSGD for {plan.rounds} rounds: C={plan.clip_norm}, σ={plan.noise_multiplier}, "
            f"q={plan.sampling_rate}, server Adam lr={plan.server_learning_rate}; "
            f"federated DP evaluation every {plan.evaluate_every} rounds\n",
            file=out,
            flush=True,
        )
        with observer_for(out, plan.rounds) as display:
            observer: RunObserver = display
            if kill_after_round is not None:
                observer = _KillAfterRound(display, agents, *kill_after_round)
            outcome = run_study(federation, package, setup.root / "run", observer)
    if outcome.model_path is None:
        raise DemoError("the package has no inference model to score")
    result = FederatedDemoResult(
        setup.root,
        outcome,
        score_onnx(outcome.model_path, cohorts),
        centralized_baseline(cohorts),
        majority_baseline(cohorts),
        cohorts,
        agents,
    )
    _print_summary(out, result, time.monotonic() - started)
    return result


class _KillAfterRound:
    """Passes events on; SIGKILLs one agent once a given round is done (the tests' failure drill)."""

    def __init__(self, inner: RunObserver, agents: Sequence[HospitalAgent], name: str, after_round: int) -> None:
        self.inner = inner
        self.target = next(a for a in agents if a.name == name)
        self.after_round = after_round

    def note(self, message: str) -> None:
        self.inner.note(message)

    def task_finished(self, round_number: int, task: SiteTask) -> None:
        self.inner.task_finished(round_number, task)

    def round_finished(self, record: RoundRecord) -> None:
        self.inner.round_finished(record)
        if record.round >= self.after_round and self.target.process.poll() is None:
            self.target.process.kill()
            self.target.process.wait()
            self.inner.note(f"(demo) killed {self.target.name} with SIGKILL after round {record.round}")


def _stop_all(agents: Sequence[HospitalAgent], out: TextIO) -> None:
    # All at once, so that they drain in parallel; each is signalled once (a second signal
    # would only ask it to stop without waiting for its calls).
    for agent in agents:
        if agent.process.poll() is None:
            agent.process.terminate()
    for agent in agents:
        stop_child(agent.process, io.StringIO(), signalled=True)
    if agents:
        codes = ", ".join(f"{a.name} {a.process.returncode}" for a in agents)
        print(f"\nagents stopped (exit codes: {codes})", file=out)


def _print_summary(out: TextIO, result: FederatedDemoResult, seconds: float) -> None:
    report = result.outcome.report
    last = next((r for r in reversed(report.rounds) if r.metrics), None)
    print(f"\nHeld-out validation cohort ({len(result.cohorts.test_y)} cases):", file=out)
    print(f"  {'model':<38} {'accuracy':>9} {'AUC':>7}", file=out)
    rows = [
        ("federated DP logistic regression", result.federated),
        ("centralized, non-private (pooled data)", result.centralized),
        ("majority class", result.majority),
    ]
    for label, scores in rows:
        print(f"  {label:<38} {scores.accuracy:>9.3f} {scores.auc:>7.3f}", file=out)
    if last is not None:
        accuracy = last.metrics.get("correct")
        if accuracy is not None:
            print(
                f"  (federated DP evaluation on the hospitals' own data after round {last.round}: "
                f"{noisy('accuracy', accuracy, last.metrics_noise_sd.get('correct'))}, the DP noise's SD)",
                file=out,
            )
    print("\nPrivacy spent per hospital (from each agent's ledger, via GetBudget):", file=out)
    for site in report.sites:
        if site.epsilon_spent is None:
            print(f"  {site.site:<20} {site.status}; {site.rounds_contributed} rounds contributed", file=out)
            continue
        print(
            f"  {site.site:<20} ε = {site.epsilon_spent:.2f} of {site.epsilon_limit:g} at δ = {site.delta:g} "
            f"({site.accountant}); {site.rounds_contributed} rounds contributed",
            file=out,
        )
    print("\nAudit logs (check one with: edge-agent audit verify --config <hospital dir>/agent.toml):", file=out)
    for agent in result.agents:
        verdict = verify_log(agent.audit_dir, [load_key_file(agent.directory / "identity.key").public_key])
        state = f"intact, {verdict.entries_checked} entries" if verdict.ok else f"NOT INTACT: {verdict.first_break}"
        print(f"  {agent.name:<20} {agent.audit_dir}  ({state})", file=out)
    print(f"\nModel: {report.model_file}\nRun report: {result.outcome.report_path}", file=out)
    print(f"Demo finished in {seconds:.0f} s. Remove {result.workdir} when done.", file=out)
