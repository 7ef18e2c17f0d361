"""One federated study from start to end: dial, check, upload, train, export, report."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.durable import write_public
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError, ClientCredentials, Units
from edge_sponsor.coordinator.federation import Federation
from edge_sponsor.coordinator.report import RunReport, SiteSummary
from edge_sponsor.coordinator.run_page import coefficients_of, render_run_page
from edge_sponsor.coordinator.study_package import StudyPackage
from edge_sponsor.coordinator.training import FederatedTraining, ReadySite, RunObserver, TrainingResult

MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"
REPORT_PAGE = "report.html"


@dataclass(frozen=True)
class StudyOutcome:
    report: RunReport
    result: TrainingResult
    report_path: Path
    model_path: Path | None


def new_run_id(federation: Federation) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{federation.name}-{stamp}-{secrets.token_hex(3)}"


def open_clients(federation: Federation) -> dict[str, AgentClient]:
    credentials = ClientCredentials.from_files(federation.ca_file, federation.cert_file, federation.key_file)
    return {
        site.name: AgentClient(
            site.address, credentials, server_name=federation.server_name, timeout=federation.connect_seconds
        )
        for site in federation.sites
    }


def run_study(
    federation: Federation,
    package: StudyPackage,
    out_dir: Path,
    observer: RunObserver,
    *,
    run_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> StudyOutcome:
    """Trains ``package`` across the federation and writes model.onnx, report.json and report.html to ``out_dir``.

    Raises FederationError when too few agents are usable; a site lost during
    the run is reported, not raised.
    """
    run_id = run_id or new_run_id(federation)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    package.check_exportable()  # before any ε is spent
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / REPORT_FILE

    def report(
        result: TrainingResult, sites: list[SiteSummary], model: Path | None, *, finished: bool = False
    ) -> RunReport:
        written = RunReport(
            federation=federation.name,
            run_id=run_id,
            algorithm=federation.training.algorithm.value,
            package_name=f"{package.manifest.name} {package.manifest.version}",
            package_digest=package.digest,
            started_at=started_at,
            finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            plan={k: (v.value if hasattr(v, "value") else v) for k, v in asdict(federation.training).items()},
            rounds=tuple(result.rounds),
            sites=tuple(sites),
            model_file=str(model) if model else "",
            extra={**(extra or {}), **({"stopped_early": result.stopped_early} if result.stopped_early else {})},
        )
        written.write(report_path)
        # The trained model's coefficients: a run that stopped early has none to show.
        coefficients = coefficients_of(package.manifest, result.parameters) if finished else None
        write_public(out_dir / REPORT_PAGE, render_run_page(written, coefficients).encode())
        return written

    clients = open_clients(federation)
    training = FederatedTraining(federation, clients, package, observer, run_id=run_id)
    left_out: list[SiteSummary] = []
    try:
        ready, left_out = training.prepare()
        observer.note(
            f"{len(ready)} of {len(federation.sites)} agents ready: "
            + ", ".join(f"{r.site.name} ({r.agent_id}, {r.site.dataset})" for r in ready)
        )
        result = training.train(ready, package.initial_parameters())
        summaries = [_summary(clients[r.site.name], r, result) for r in ready]
    except BaseException as exc:
        # Every site may already have spent ε: what happened must be on record.
        partial = training.result
        if partial is not None:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            partial.stopped_early = partial.stopped_early or f"interrupted ({reason})"
            sites = [_summary(None, r, partial) for r in partial.ready]
            report(partial, sites + left_out, None)
            observer.note(f"the run stopped early; its report so far is in {report_path}")
        raise
    finally:
        training.close()
        for client in clients.values():
            client.close()
    model_path: Path | None = None
    if package.inference_model is not None:
        model_path = out_dir / MODEL_FILE
        package.export(result.parameters, model_path)
    written = report(result, summaries + left_out, model_path, finished=True)
    return StudyOutcome(written, result, report_path, model_path)


def _summary(client: AgentClient | None, ready: ReadySite, result: TrainingResult) -> SiteSummary:
    """What the run did at one site, with its budget from GetBudget (unless ``client`` is None)."""
    site = ready.site
    base = SiteSummary(
        site=site.name,
        address=site.address,
        dataset=site.dataset,
        agent_id=ready.agent_id,
        rounds_contributed=result.charged[site.name].rounds_contributed,
        epsilon_spent_before=ready.epsilon_before,
        epsilon_charged_by_run=result.charged[site.name].epsilon,
        epsilon_last_reported=result.charged[site.name].budget_epsilon,
    )
    if client is None:
        return dataclasses.replace(base, status="run interrupted; budget not read")
    try:
        budget = client.get_budget(site.dataset)
    except AgentRpcError as exc:
        return dataclasses.replace(base, status=f"budget not read: {exc.code.name}: {exc.details}")
    units = Units.of_budget(budget)
    return dataclasses.replace(
        base,
        budget_group=budget.budget_group,
        epsilon_spent=budget.epsilon_spent,
        epsilon_limit=budget.epsilon_limit,
        delta=budget.delta,
        accountant=budget.accountant,
        epsilon_per=units.epsilon_per,
        units_lower=units.lower,
        units_upper=units.upper,
    )
