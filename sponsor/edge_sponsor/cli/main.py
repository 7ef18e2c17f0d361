"""Entry point of the `edge-sponsor` command: the sponsor's tools.

``coordinate`` (the reference coordinator), ``demo`` (what `make demo` runs) and
``package build|sign`` (publisher tooling). The hospital's commands stay in
`edge-agent`, which this distribution installs too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

# Before grpc is imported: the demo's agents and the coordinator's channels
# would otherwise print gRPC C-core lines to the terminal.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from agent import __version__
from agent.cli.dispatch import run_command
from agent.cli.settings import UsageError
from agent.config import ConfigError
from agent.datasets import DatasetError
from agent.identity.agent_key import KeyFileError
from agent.packages import PackageError, PackageInputError
from edge_sponsor.cli import coordinate, demo, package
from edge_sponsor.coordinator.client import AgentRpcError, CredentialsError

# Errors caused by input the person can fix, reported as exit code 2.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    UsageError,
    KeyFileError,
    CredentialsError,
    PackageInputError,
    *coordinate.USAGE_ERRORS,
)
# Errors of the environment, of the data or of a remote agent, exit code 1.
FAILURE_ERRORS: tuple[type[Exception], ...] = (
    DatasetError,
    AgentRpcError,
    PackageError,
    *coordinate.FAILURE_ERRORS,
    *demo.FAILURE_ERRORS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-sponsor",
        description="Edge Agent's sponsor tools: reference coordinator, package publishing, demo.",
    )
    # One version for both distributions: edge-agent-sponsor requires edge-agent of its own version.
    parser.add_argument("--version", action="version", version=f"edge-sponsor {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    coordinate.add_parser(subparsers)
    package.add_parser(subparsers)
    demo.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, usage_errors=USAGE_ERRORS, failure_errors=FAILURE_ERRORS)
