"""`edge-agent demo`: the guided tour that `make demo` runs."""

from __future__ import annotations

import argparse

from agent.cli.exit_codes import ExitCode
from agent.demo.foundation import DemoError, run_foundation_demo

__all__ = ["DemoError", "add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start an agent with a sample dataset and query it over mTLS",
        description="Start a development agent as a separate process with a synthetic sample "
        "dataset, query it with the coordinator client over mutual TLS, then stop it.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    run_foundation_demo()
    return ExitCode.SUCCESS
