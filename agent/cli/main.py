"""Entry point of the `edge-agent` command: the hospital's commands.

The sponsor's tools (reference coordinator, demo, package build and sign) are
the `edge-sponsor` command of the separate edge-agent-sponsor distribution;
nothing here imports them, so that the daemon's install does not carry them.
Errors become one line and an exit code in agent.cli.dispatch.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

# Before grpc is imported: keep gRPC C-core lines out of the JSON log.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from agent import __version__
from agent.cli import audit, budget, datasets, dev_certs, doctor, keys, package, policy, serve
from agent.cli.dispatch import run_command
from agent.cli.settings import UsageError
from agent.config import ConfigError
from agent.datasets import DatasetError
from agent.identity.agent_key import KeyFileError
from agent.packages import PackageError, PackageInputError, TrustStoreError, UnknownPackageError

# Errors caused by input the person can fix, reported as exit code 2.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    UsageError,
    KeyFileError,
    PackageInputError,
    TrustStoreError,
    UnknownPackageError,
    *audit.USAGE_ERRORS,
    *budget.USAGE_ERRORS,
)
# Errors of the environment or of the data, exit code 1.
FAILURE_ERRORS: tuple[type[Exception], ...] = (
    DatasetError,
    datasets.DatasetCommandError,
    policy.PolicyReloadError,
    PackageError,
    *audit.FAILURE_ERRORS,
    *budget.FAILURE_ERRORS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Edge Agent: the hospital-side daemon of a federated-learning platform.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(subparsers)
    doctor.add_parser(subparsers)
    datasets.add_parser(subparsers)
    policy.add_parser(subparsers)
    package.add_parser(subparsers)
    audit.add_parser(subparsers)
    budget.add_parser(subparsers)
    keys.add_parser(subparsers)
    dev_certs.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, usage_errors=USAGE_ERRORS, failure_errors=FAILURE_ERRORS)
