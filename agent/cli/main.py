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

from agent.cli import audit, budget, datasets, dev_certs, doctor, keys, package, policy, serve
from agent.cli.dispatch import program_parser, run_command
from agent.cli.settings import IdentityMismatchError
from agent.packages import TrustStoreError, UnknownPackageError
from agent.state_lock import StateDirectoryBusyError

# Beyond agent.cli.dispatch's common ones: input the person can fix, exit code 2 ...
USAGE_ERRORS: tuple[type[Exception], ...] = (
    TrustStoreError,
    UnknownPackageError,
    *audit.USAGE_ERRORS,
    *budget.USAGE_ERRORS,
)
# ... and errors of the environment or of the data, exit code 1.
FAILURE_ERRORS: tuple[type[Exception], ...] = (
    datasets.DatasetCommandError,
    policy.PolicyReloadError,
    StateDirectoryBusyError,
    IdentityMismatchError,
    *audit.FAILURE_ERRORS,
    *budget.FAILURE_ERRORS,
)


def build_parser() -> argparse.ArgumentParser:
    return program_parser(
        "edge-agent",
        "Edge Agent: the hospital-side daemon of a federated-learning platform.",
        [
            serve.add_parser,
            doctor.add_parser,
            datasets.add_parser,
            policy.add_parser,
            package.add_parser,
            audit.add_parser,
            budget.add_parser,
            keys.add_parser,
            dev_certs.add_parser,
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, usage_errors=USAGE_ERRORS, failure_errors=FAILURE_ERRORS)
