"""`edge-agent budget show`: the privacy budget of every budget group, from the ledger.

Read-only: it never creates the ledger and never changes it. Exit codes: 0
shown; 1 the ledger cannot be read (PrivacyError, message names the file);
2 bad config (already a usage error in agent/cli/main.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.exit_codes import ExitCode
from agent.cli.settings import add_config_arguments, resolve_config
from agent.config import AgentConfig
from agent.config.errors import ConfigError
from agent.datasets import DatasetCatalog, DatasetError, DatasetRegistry, row_count_bucket
from agent.governance.development import development_policy
from agent.governance.loader import load_policy
from agent.privacy.errors import PrivacyError

if TYPE_CHECKING:
    from agent.privacy.ledger import BudgetStatus

# For agent/cli/main.py, like agent/cli/audit.py.
USAGE_ERRORS: tuple[type[Exception], ...] = ()
FAILURE_ERRORS: tuple[type[Exception], ...] = (PrivacyError,)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "budget",
        help="show the privacy budget spent per budget group",
        description="Privacy budget ledger tools (docs/privacy.md).",
    )
    commands = parser.add_subparsers(dest="budget_command", required=True, metavar="COMMAND")
    show = commands.add_parser(
        "show",
        help="list budget groups with ε spent, in flight and the limit",
        description="List every budget group in the ledger: ε spent by committed tasks, ε including tasks "
        "still running, the limit and δ of the latest reservation, task counts and the last use. "
        "ε is composed over every task ever run on the group (PLD accountant unless --accountant rdp). "
        "Below the table, what ε is counted per for each dataset: per patient where the dataset declares a "
        "privacy unit, per row where it does not.",
    )
    add_config_arguments(show)
    show.add_argument(
        "--ledger", type=Path, default=None, help="ledger file (default: privacy-ledger.sqlite in the state directory)"
    )
    show.add_argument(
        "--accountant",
        choices=["pld", "rdp"],
        default=None,
        help="accountant to compose with (default: the one the agent recorded with its latest reservation)",
    )
    show.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    show.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace) -> int:
    # Imported here: dp-accounting takes about a second to import, and every
    # other edge-agent command would pay for it.
    from agent.privacy.accounting import AccountantKind, make_accountant  # noqa: PLC0415
    from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger  # noqa: PLC0415

    config = resolve_config(args)
    path: Path = args.ledger if args.ledger is not None else config.state_dir / LEDGER_FILENAME
    kind = args.accountant or (PrivacyLedger(path).recorded_accountant() or AccountantKind.PLD).value
    ledger = PrivacyLedger(path, make_accountant(kind))
    groups: list[BudgetStatus] = ledger.groups()
    units, unknown = _units_by_group(config)
    if args.json:
        document = {
            "ledger": str(path),
            "accountant": kind,
            "groups": [_as_dict(g, units.get(g.budget_group, ())) for g in groups],
        }
        if unknown:
            document["datasets_unknown"] = unknown
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return ExitCode.SUCCESS
    if not groups:
        exists = "" if path.exists() else " (the file does not exist yet: no task has run)"
        print(f"no budget group has been charged in {path}{exists}")
        return ExitCode.SUCCESS
    print(f"ledger {path} (accountant: {kind})")
    header = f"{'BUDGET GROUP':<24}  {'ε SPENT':>8}  {'IN FLIGHT':>9}  {'ε LIMIT':>8}  {'REMAINING':>9}  "
    print(f"{header}{'δ':>8}  {'TASKS':>5}  {'RUNNING':>7}  LAST USE (UTC)")
    for g in groups:
        limit = "-" if g.limit_epsilon is None else f"{g.limit_epsilon:.3f}"
        remaining = "-" if g.epsilon_remaining is None else f"{g.epsilon_remaining:.3f}"
        delta = "-" if g.delta is None else f"{g.delta:.0e}"
        last = "-" if g.last_used is None else g.last_used.isoformat(timespec="seconds").replace("+00:00", "")
        print(
            f"{_safe(g.budget_group):<24}  {g.epsilon_spent:>8.3f}  {g.epsilon_reserved:>+9.3f}  {limit:>8}  "
            f"{remaining:>9}  {delta:>8}  {g.tasks_committed:>5}  {g.tasks_reserved:>7}  {last}"
        )
    print()
    print("what ε is counted per (ε per patient protects all of a patient's rows together):")
    shown = False
    for g in groups:
        for dataset in units.get(g.budget_group, ()):
            print(f"  {_safe(g.budget_group)} / {_safe(dataset.dataset)}: {dataset.describe()}")
            shown = True
    if unknown:
        print(f"  {unknown}")
    elif not shown:
        print("  no dataset in the catalog spends from these groups now")
    return ExitCode.SUCCESS


@dataclass(frozen=True)
class DatasetUnits:
    """What ε is counted per for one dataset of a budget group, from its declaration and its files now."""

    dataset: str
    privacy_unit: str | None  # the unit column (shown here only: this command runs at the hospital)
    max_rows_per_unit: int
    units: tuple[int, int] | None  # the units (patients, or rows), bucketed; None when the files cannot be read

    def describe(self) -> str:
        count = "" if self.units is None else _bucket(self.units)
        if self.privacy_unit is not None:
            patients = f"; {count} patients" if count else ""
            return (
                f"ε per patient (privacy unit {_safe(self.privacy_unit)}, at most {self.max_rows_per_unit} rows "
                f"of each read{patients})"
            )
        rows = f" ({count} rows)" if count else ""
        return f"ε per row{rows} — no privacy unit: a patient with k rows is protected only at about k·ε"

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "privacy_unit": self.privacy_unit,
            "epsilon_per": "unit" if self.privacy_unit is not None else "row",
            "max_rows_per_unit": self.max_rows_per_unit if self.privacy_unit is not None else None,
            "unit_count": None if self.units is None else list(self.units),
        }


def _bucket(bucket: tuple[int, int]) -> str:
    lower, upper = bucket
    return f"{lower:,} to {upper - 1:,}" if lower else f"fewer than {upper:,}"


def _units_by_group(config: AgentConfig) -> tuple[dict[str, list[DatasetUnits]], str | None]:
    """Per budget group, its datasets in the catalog now and what their ε is counted per.

    The ledger knows groups, not datasets: which dataset spends from which group and
    whether it declares a privacy unit come from the policy and the catalog in force.
    When they cannot be read the budget is still shown, with a line saying why.
    """
    try:
        policy = development_policy() if config.policy_file is None else load_policy(config.policy_file)
        catalog = DatasetCatalog(config.datasets, DatasetRegistry(config.dataset_registry_file))
        found: dict[str, list[DatasetUnits]] = {}
        for inspection in catalog.inspect_all():
            rule = policy.dataset_rule(inspection.spec.id)
            if rule is None:
                continue
            units = inspection.units if inspection.available else None
            found.setdefault(rule.budget_group, []).append(
                DatasetUnits(
                    inspection.spec.id,
                    inspection.spec.privacy_unit,
                    rule.max_rows_per_unit,
                    None if units is None else row_count_bucket(units),
                )
            )
    except (ConfigError, DatasetError, OSError) as exc:
        return {}, f"datasets unknown (the policy or the dataset catalog cannot be read: {_safe(str(exc))})"
    return found, None


def _as_dict(status: BudgetStatus, datasets: Sequence[DatasetUnits] = ()) -> dict[str, Any]:
    return {
        "datasets": [d.as_dict() for d in datasets],
        "budget_group": status.budget_group,
        "epsilon_spent": status.epsilon_spent,
        "epsilon_with_reserved": status.epsilon_with_reserved,
        "epsilon_reserved": status.epsilon_reserved,
        "epsilon_limit": status.limit_epsilon,
        "epsilon_remaining": status.epsilon_remaining,
        "delta": status.delta,
        "tasks_committed": status.tasks_committed,
        "tasks_reserved": status.tasks_reserved,
        "last_used": None if status.last_used is None else status.last_used.isoformat(),
    }


def _safe(text: str) -> str:
    """Group names come from the policy file; keep terminal control characters off the screen."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
