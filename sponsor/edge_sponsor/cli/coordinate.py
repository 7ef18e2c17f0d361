"""`edge-sponsor coordinate`: the reference coordinator (docs/coordinator.md).

``check`` dials every agent of a federation file and shows what it offers;
``train`` runs a federated DP study and writes model.onnx and report.json.
Exit codes: 0 done; 1 agents unusable or the run failed; 2 bad federation file,
package or credentials.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.cli.exit_codes import ExitCode
from agent.cli.settings import UsageError
from agent.privacy.accounting import PldAccountant
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError, Units, dataset_format_name
from edge_sponsor.coordinator.federation import Federation, Site, load_federation
from edge_sponsor.coordinator.privacy_plan import (
    PlanningError,
    SiteProjection,
    evaluation_rounds,
    noise_for_epsilon,
    project,
    training_tasks,
)
from edge_sponsor.coordinator.progress import observer_for
from edge_sponsor.coordinator.study import open_clients, run_study
from edge_sponsor.coordinator.study_package import StudyPackage, StudyPackageError
from edge_sponsor.coordinator.training import FederationError

USAGE_ERRORS: tuple[type[Exception], ...] = (StudyPackageError,)
FAILURE_ERRORS: tuple[type[Exception], ...] = (FederationError,)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "coordinate",
        help="reference coordinator: check agents, run federated DP training",
        description="The reference coordinator: dials the agents of a federation file over mutual TLS.",
    )
    commands = parser.add_subparsers(dest="coordinate_command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="dial every agent; show identity, health and the study's dataset",
        description="Dial every agent of the federation concurrently and show its identity, health, who we "
        "are to it, and the dataset the study uses there. Exit 1 if any agent is unusable.",
    )
    check.add_argument("federation", type=Path, help="federation file (TOML)")
    check.set_defaults(handler=run_check)

    plan = commands.add_parser(
        "plan",
        help="what the run will cost each site in ε, before anything is spent",
        description="Ask every agent where its budget group would stand after this run's training and "
        "evaluation tasks, by the agent's own accounting (nothing is reserved or spent). Exit 1 if the run "
        "would take any site over its limit, or a site cannot say. With --target-epsilon, also the smallest "
        "training noise multiplier at which the run alone costs at most that ε at each site's δ.",
    )
    plan.add_argument("federation", type=Path, help="federation file (TOML)")
    plan.add_argument("--rounds", type=int, default=None, help="override [training] rounds")
    plan.add_argument("--target-epsilon", type=float, default=None, metavar="EPS", help="solve for sigma")
    plan.set_defaults(handler=run_plan_command)

    train = commands.add_parser(
        "train",
        help="upload a package and train it across the agents",
        description="Check the agents, upload the package to each, run DP-FedSGD or DP-FedAvg for the "
        "configured rounds with federated evaluation, then write model.onnx (the package's inference "
        "model with the trained parameters) and report.json (per-round metrics, per-site ε).",
    )
    train.add_argument("federation", type=Path, help="federation file (TOML)")
    train.add_argument("--package", type=Path, required=True, help="signed package archive (.zip)")
    train.add_argument("--out", type=Path, required=True, help="directory for model.onnx and report.json")
    train.add_argument("--rounds", type=int, default=None, help="override [training] rounds")
    train.add_argument("--run-id", default=None, help="run id recorded in every agent's audit log")
    train.set_defaults(handler=run_train)


def _describe(client: AgentClient, site: Site, connect_seconds: float) -> str:
    try:
        client.wait_until_ready(connect_seconds)
        info = client.get_info()
        health = client.health()
        dataset = client.get_dataset(site.dataset)
    except AgentRpcError as exc:
        return f"{site.name} ({site.address}): UNUSABLE: {exc.code.name}: {exc.details}"
    upper = dataset.row_count.upper or "inf"
    fmt = dataset_format_name(dataset.format)
    return (
        f"{site.name} ({site.address}): agent {info.agent_id} {info.version}, {health}, we are "
        f"{info.caller_identity}\n  dataset {dataset.id}: {fmt}, rows in [{dataset.row_count.lower}, {upper}), "
        f"{len(dataset.columns)} columns\n  {Units.of_dataset(dataset).describe()}"
    )


def run_check(args: argparse.Namespace) -> int:
    federation = load_federation(args.federation)
    clients = open_clients(federation)
    try:
        with ThreadPoolExecutor(max_workers=len(federation.sites)) as pool:
            lines = list(
                pool.map(lambda site: _describe(clients[site.name], site, federation.connect_seconds), federation.sites)
            )
    finally:
        for client in clients.values():
            client.close()
    for line in lines:
        print(line)
    return ExitCode.FAILURE if any(": UNUSABLE: " in line for line in lines) else ExitCode.SUCCESS


def _federation(args: argparse.Namespace) -> Federation:
    federation: Federation = load_federation(args.federation)
    if args.rounds is not None:
        if not 1 <= args.rounds <= 100_000:
            raise UsageError(f"--rounds must be between 1 and 100000, got {args.rounds}")
        federation = dataclasses.replace(
            federation, training=dataclasses.replace(federation.training, rounds=args.rounds)
        )
    return federation


def _projections(federation: Federation) -> list[SiteProjection]:
    try:
        tasks = training_tasks(federation.training)
    except PlanningError as exc:
        raise UsageError(f"{federation.source}: {exc}") from None
    clients = open_clients(federation)
    try:
        return project(federation, clients, tasks)
    finally:
        for client in clients.values():
            client.close()


def _projection_line(projection: SiteProjection) -> str:
    if projection.problem:
        said = "refused the run's tasks" if projection.refused else "cannot say"
        return f"{projection.site}: {said}: {projection.problem}"
    verdict = "fits" if projection.fits else "DOES NOT FIT"
    return (
        f"{projection.site}: ε {projection.epsilon_spent:.3f} spent "
        f"(+{projection.epsilon_reserved - projection.epsilon_spent:.3f} in flight) -> "
        f"{projection.epsilon_projected:.3f} after this run, limit {projection.epsilon_limit:g} at "
        f"δ {projection.delta:g}: {verdict}"
    )


def run_plan_command(args: argparse.Namespace) -> int:
    federation = _federation(args)
    plan = federation.training
    print(
        f"{plan.rounds} rounds of {plan.algorithm.value} (sigma {plan.noise_multiplier:g}, q {plan.sampling_rate:g}) "
        f"and {evaluation_rounds(plan)} evaluations (sigma {plan.evaluation_noise_multiplier:g}) per site"
    )
    projections = _projections(federation)
    for projection in projections:
        print(_projection_line(projection))
    if args.target_epsilon is not None:
        deltas = sorted({p.delta for p in projections if not p.problem}) or [1e-5]
        accountant = PldAccountant()
        try:
            sigma = max(noise_for_epsilon(plan, args.target_epsilon, delta, accountant) for delta in deltas)
        except PlanningError as exc:
            raise UsageError(str(exc)) from None
        finally:
            accountant.close()
        print(
            f"noise_multiplier = {sigma:g} makes this run alone cost at most ε = {args.target_epsilon:g} at every "
            f"site's δ ({', '.join(f'{d:g}' for d in deltas)})"
        )
    # A site that cannot say is not known to fit: the plan is not confirmed.
    return ExitCode.SUCCESS if all(p.fits for p in projections) else ExitCode.FAILURE


def run_train(args: argparse.Namespace) -> int:
    federation = _federation(args)
    package = StudyPackage.from_file(args.package)
    # Before anything is spent: a run that some site's budget or policy cannot take is not started.
    # A site that cannot be reached now is left to the run's own quorum rules, and said so.
    projections = _projections(federation)
    for projection in projections:
        if projection.problem and not projection.refused:
            print(f"edge-sponsor: warning: {_projection_line(projection)}", file=sys.stderr)
    over = [p for p in projections if p.refused or (not p.problem and not p.fits)]
    if over:
        for projection in over:
            print(_projection_line(projection), file=sys.stderr)
        raise FederationError(
            f"the run would take {', '.join(p.site for p in over)} over the privacy budget, or its policy refuses "
            "the run's tasks; nothing was spent (edge-sponsor coordinate plan shows each site's figures)"
        )
    with observer_for(sys.stdout, federation.training.rounds) as observer:
        outcome = run_study(federation, package, args.out, observer, run_id=args.run_id)
    for site in outcome.report.sites:
        if site.epsilon_added is None:
            print(f"{site.site}: {site.status}; ε at least {site.epsilon_last_reported:.3f} (last reported)")
        else:
            print(
                f"{site.site}: ε {site.epsilon_spent:.3f} of {site.epsilon_limit:g} spent "
                f"(this run added {site.epsilon_added:.3f}; its tasks' shares {site.epsilon_charged_by_run:.3f}); "
                f"{site.rounds_contributed} rounds contributed; {site.units_described}"
            )
    if outcome.model_path is not None:
        print(f"model: {outcome.model_path}")
    print(f"report: {outcome.report_path}")
    stopped = outcome.result.stopped_early
    if stopped:
        print(f"edge-sponsor: error: the run stopped early: {stopped}", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.SUCCESS
