"""`edge-agent policy check|explain|reload`."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import time
from pathlib import Path

from agent.cli.exit_codes import ExitCode
from agent.cli.settings import UsageError, add_config_arguments, resolve_config
from agent.datasets import DatasetCatalog, DatasetRegistry, UnknownDatasetError
from agent.governance.decisions import Action, Request, TaskRequest, UsageState, decide
from agent.governance.development import development_policy
from agent.governance.loader import load_policy
from agent.governance.model import Policy
from agent.governance.status import PID_FILENAME, PolicyStatus
from agent.state_lock import lock_holder
from agent.tasks.kinds import registry


class PolicyReloadError(Exception):
    """The running agent could not be told, or did not apply the new policy."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "policy", help="check, explain and reload the governance policy", description="Governance policy tools."
    )
    commands = parser.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check", help="validate a policy file without applying it", description="Validate a policy file."
    )
    check.add_argument("file", type=Path)
    check.set_defaults(handler=run_check)

    explain = commands.add_parser(
        "explain",
        help="show the decision the policy takes for a request, and the rule",
        description="Show what the policy decides for a coordinator, dataset and task, and which rule decides. "
        "Exit code 0 when allowed, 1 when refused.",
    )
    add_config_arguments(explain)
    explain.add_argument("--policy", type=Path, default=None, help="policy file (default: the config's)")
    explain.add_argument("--coordinator", required=True, help="coordinator identity (certificate SAN URI or CN)")
    explain.add_argument("--dataset", default=None, help="dataset id")
    explain.add_argument("--task", choices=registry.names(), default=None, help="task kind")
    explain.add_argument("--package", default="", help="package name the task would run")
    explain.add_argument("--purpose", default="", help="declared purpose of use")
    explain.add_argument("--columns", default="", help="comma-separated dataset columns the package reads")
    explain.add_argument("--label-columns", default="", help="comma-separated columns used as label/time/event")
    # One option per hyperparameter any kind takes; a kind reads only its own.
    for hyperparameter in registry.hyperparameters():
        explain.add_argument(
            hyperparameter.option, type=int if hyperparameter.integer else float, default=hyperparameter.example
        )
    explain.add_argument(
        "--cohort-size",
        type=int,
        default=None,
        help="units: patients where the dataset declares a privacy unit, else rows (default: counted from the dataset)",
    )
    explain.add_argument(
        "--privacy-unit",
        default=None,
        metavar="COLUMN",
        help="the dataset's privacy-unit column (default: as the dataset declares it)",
    )
    explain.add_argument("--at", default=None, help="ISO date-time to decide at (default: now)")
    explain.set_defaults(handler=run_explain)

    reload = commands.add_parser(
        "reload",
        help="validate the policy file and make the running agent apply it",
        description="Validate the config's policy file, send SIGHUP to the running agent, and wait until it "
        "reports the new policy in force. Under systemd, `systemctl reload edge-agent` does the same.",
    )
    add_config_arguments(reload)
    reload.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the agent")
    reload.set_defaults(handler=run_reload)


def _columns(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def run_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)
    print(
        f"{args.file}: valid ({len(policy.coordinators)} coordinators, {len(policy.datasets)} datasets, "
        f"{len(policy.publishers)} publisher keys; {policy.digest})"
    )
    return ExitCode.SUCCESS


def _policy_for(args: argparse.Namespace) -> tuple[Policy, DatasetCatalog | None]:
    if args.policy is not None:
        return load_policy(args.policy), None
    config = resolve_config(args)
    catalog = DatasetCatalog(config.datasets, DatasetRegistry(config.dataset_registry_file))
    if config.policy_file is None:
        return development_policy(), catalog
    return load_policy(config.policy_file), catalog


def run_explain(args: argparse.Namespace) -> int:
    policy, catalog = _policy_for(args)
    now = dt.datetime.now(dt.UTC)
    if args.at:
        try:
            now = dt.datetime.fromisoformat(args.at)
        except ValueError:
            raise UsageError(f"--at: not an ISO date-time: {args.at!r}") from None
        now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    known = True
    cohort = args.cohort_size
    unit = args.privacy_unit
    if catalog is not None and args.dataset:
        try:
            inspection = catalog.inspect(args.dataset)
            cohort = cohort if cohort is not None else inspection.units
            unit = unit if unit is not None else inspection.spec.privacy_unit
        except UnknownDatasetError:
            known = False
    task = None
    action = Action.GET_DATASET if args.dataset else Action.GET_INFO
    profile = registry.by_name(args.task) if args.task else None
    if profile is not None:
        action = Action.RUN_TASK
        task = TaskRequest(
            profile=profile.from_values({h.name: getattr(args, h.name) for h in profile.declared()}),
            package_name=args.package,
            columns=_columns(args.columns) | _columns(args.label_columns),
            label_columns=_columns(args.label_columns),
            purpose=args.purpose,
            cohort_size=cohort,
            privacy_unit=unit,
        )
    request = Request(args.coordinator, action, now, dataset_id=args.dataset, task=task, dataset_known=known)
    decision = decide(request, policy, UsageState())
    verdict = "ALLOWED" if decision.allowed else f"REFUSED ({decision.outcome})"
    print(f"{verdict} by rule {decision.rule}: {decision.reason}")
    print(f"policy: {policy.source} ({policy.digest})")
    return ExitCode.SUCCESS if decision.allowed else ExitCode.FAILURE


def run_reload(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if config.policy_file is None:
        raise UsageError("a development instance runs on its built-in policy; there is no file to reload")
    policy = load_policy(config.policy_file)  # refuse early, with the same message the agent would log
    pid_file = config.state_dir / PID_FILENAME
    # Only the process holding the state directory is the agent: agent.pid may be left over by one
    # that was killed, and its PID reused by something else by now.
    holder = lock_holder(config.state_dir)
    if holder is None:
        raise PolicyReloadError(
            f"{config.state_dir}: no running agent found (no process holds the state directory; "
            "is `edge-agent serve` running?)"
        )
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is None or pid != holder.pid:
        raise PolicyReloadError(
            f"{config.state_dir} is held by {holder}, which is not serving yet (or is not an agent); "
            f"{pid_file} names {pid if pid is not None else 'no process'}. Retry once it serves"
        )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise PolicyReloadError(f"{pid_file}: process {pid} is not running") from None
    except PermissionError:
        raise PolicyReloadError(f"not permitted to signal process {pid}; run as the agent's user or root") from None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        status = PolicyStatus.read(config.state_dir)
        if status is not None and status.digest == policy.digest:
            print(f"policy {policy.digest} in force since {status.loaded_at}")
            return ExitCode.SUCCESS
        time.sleep(0.1)
    status = PolicyStatus.read(config.state_dir)
    detail = f": {status.last_error}" if status and status.last_error else ""
    raise PolicyReloadError(f"the agent did not apply {policy.digest} within {args.timeout} s{detail}")
