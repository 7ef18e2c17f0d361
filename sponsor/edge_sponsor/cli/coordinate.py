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
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError, Units, dataset_format_name
from edge_sponsor.coordinator.federation import Federation, Site, load_federation
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


def run_train(args: argparse.Namespace) -> int:
    federation: Federation = load_federation(args.federation)
    if args.rounds is not None:
        if not 1 <= args.rounds <= 100_000:
            raise UsageError(f"--rounds must be between 1 and 100000, got {args.rounds}")
        federation = dataclasses.replace(
            federation, training=dataclasses.replace(federation.training, rounds=args.rounds)
        )
    package = StudyPackage.from_file(args.package)
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
