"""`edge-sponsor demo`: the guided tour that `make demo` runs."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from agent.cli.exit_codes import ExitCode
from agent.cli.settings import UsageError
from edge_sponsor.demo.processes import DemoError

__all__ = ["FAILURE_ERRORS", "DemoError", "add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="three hospital agents train a DP model together (or one agent with --single-agent)",
        description="Start three development agents as separate processes, each with its hospital's share "
        "of a real breast-cancer dataset, train a logistic regression with DP-FedSGD over mutual TLS, and "
        "compare it on held-out cases with a centralized non-private model. Needs scikit-learn "
        "(pip install 'edge-agent-sponsor[demo]').",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the agents' state, audit logs and the run go (default: a new temp dir)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="training rounds (default: 30)")
    parser.add_argument(
        "--single-agent",
        action="store_true",
        help="instead: start one agent with a synthetic dataset and show what a coordinator sees",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.single_agent:
        from edge_sponsor.demo.foundation import run_foundation_demo  # noqa: PLC0415

        run_foundation_demo()
        return ExitCode.SUCCESS
    from edge_sponsor.demo.breast_cancer import DemoDataError  # noqa: PLC0415
    from edge_sponsor.demo.federated import DEMO_PLAN, run_federated_demo  # noqa: PLC0415

    if args.rounds is not None and not 1 <= args.rounds <= 10_000:
        raise UsageError(f"--rounds must be between 1 and 10000, got {args.rounds}")
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        raise UsageError(f"--workdir {args.workdir} is not empty; give a new or empty directory")
    plan = DEMO_PLAN if args.rounds is None else dataclasses.replace(DEMO_PLAN, rounds=args.rounds)
    try:
        run_federated_demo(workdir=args.workdir, plan=plan)
    except DemoDataError as exc:
        raise DemoError(str(exc)) from None
    return ExitCode.SUCCESS


FAILURE_ERRORS: tuple[type[Exception], ...] = (DemoError,)
