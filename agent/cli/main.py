"""Entry point of the `edge-agent` command: parse, dispatch, turn errors into messages.

No traceback reaches the person at the terminal: known errors print one line
naming the file, key or value at fault; anything unexpected prints a short
message and, with EDGE_AGENT_DEBUG=1, the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

# Before grpc is imported: keep gRPC C-core lines out of the JSON log.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from agent import __version__
from agent.cli import audit, budget, coordinate, datasets, demo, dev_certs, doctor, keys, package, policy, serve
from agent.cli.exit_codes import ExitCode
from agent.cli.settings import UsageError
from agent.config import ConfigError
from agent.coordinator.client import AgentRpcError, CredentialsError
from agent.datasets import DatasetError
from agent.identity.agent_key import KeyFileError
from agent.packages import PackageError, PackageInputError, TrustStoreError, UnknownPackageError

# Errors caused by input the person can fix, reported as exit code 2.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    UsageError,
    KeyFileError,
    CredentialsError,
    PackageInputError,
    TrustStoreError,
    UnknownPackageError,
    *audit.USAGE_ERRORS,
    *budget.USAGE_ERRORS,
    *coordinate.USAGE_ERRORS,
)
# Errors of the environment or of the data, exit code 1.
FAILURE_ERRORS: tuple[type[Exception], ...] = (
    DatasetError,
    datasets.DatasetCommandError,
    *demo.FAILURE_ERRORS,
    policy.PolicyReloadError,
    AgentRpcError,
    PackageError,
    *audit.FAILURE_ERRORS,
    *budget.FAILURE_ERRORS,
    *coordinate.FAILURE_ERRORS,
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
    coordinate.add_parser(subparsers)
    demo.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except USAGE_ERRORS as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except FAILURE_ERRORS as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        print("edge-agent: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"edge-agent: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except Exception as exc:
        if os.environ.get("EDGE_AGENT_DEBUG"):
            traceback.print_exc()
        print(
            f"edge-agent: internal error ({type(exc).__name__}: {exc}); "
            "rerun with EDGE_AGENT_DEBUG=1 for details and report it",
            file=sys.stderr,
        )
        return ExitCode.FAILURE
