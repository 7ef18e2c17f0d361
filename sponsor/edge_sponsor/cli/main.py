"""Entry point of the `edge-sponsor` command: the sponsor's tools.

``coordinate`` (the reference coordinator), ``demo`` (what `make demo` runs) and
``package build|sign`` and ``plan build|sign`` (publisher tooling), ``study describe|survival``
(analysis plans across the federation). The hospital's commands stay in
`edge-agent`, which this distribution installs too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

# Before grpc is imported: the demo's agents and the coordinator's channels
# would otherwise print gRPC C-core lines to the terminal.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from agent.cli.dispatch import program_parser, run_command
from edge_sponsor.cli import coordinate, demo, package, plan, study
from edge_sponsor.coordinator.client import AgentRpcError, CredentialsError

# Beyond agent.cli.dispatch's common ones: input the person can fix, exit code 2 ...
USAGE_ERRORS: tuple[type[Exception], ...] = (CredentialsError, *coordinate.USAGE_ERRORS, *study.USAGE_ERRORS)
# ... and errors of the environment, of the data or of a remote agent, exit code 1.
FAILURE_ERRORS: tuple[type[Exception], ...] = (
    AgentRpcError, *coordinate.FAILURE_ERRORS, *demo.FAILURE_ERRORS, *study.FAILURE_ERRORS
)


def build_parser() -> argparse.ArgumentParser:
    return program_parser(
        "edge-sponsor",
        "Edge Agent's sponsor tools: reference coordinator, package publishing, demo.",
        [coordinate.add_parser, package.add_parser, plan.add_parser, study.add_parser, demo.add_parser],
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), argv, usage_errors=USAGE_ERRORS, failure_errors=FAILURE_ERRORS)
