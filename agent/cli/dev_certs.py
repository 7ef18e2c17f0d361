"""`edge-agent dev-certs`: create (or show) the development PKI."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.exit_codes import ExitCode
from agent.config.development import DEFAULT_STATE_DIR, DEV_PKI_DIRNAME
from agent.identity.development_pki import ensure_development_pki


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dev-certs",
        help="create a development PKI (CA, agent and coordinator certificates)",
        description="Create a development CA, a server certificate for the agent (localhost, "
        "127.0.0.1, ::1 and any --hostname) and a coordinator client certificate. Reuses a "
        "complete PKI already in the directory. For development and demos only.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_STATE_DIR / DEV_PKI_DIRNAME,
        help=f"directory to write to (default: {DEFAULT_STATE_DIR / DEV_PKI_DIRNAME})",
    )
    parser.add_argument("--hostname", action="append", default=[], help="extra DNS name for the agent certificate")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    pki, created = ensure_development_pki(args.out, hostnames=("localhost", *args.hostname))
    print(f"{'created' if created else 'existing'} development PKI in {pki.directory.resolve()}")
    print(f"  agent (server):  {pki.agent_cert}  {pki.agent_key}")
    print(f"  coordinator:     {pki.coordinator_cert}  {pki.coordinator_key}")
    print(f"  CA:              {pki.ca_cert}")
    return ExitCode.SUCCESS
