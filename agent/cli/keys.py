"""`edge-agent keys generate`: create an Ed25519 key pair."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.exit_codes import ExitCode
from agent.identity.agent_key import KeyFileError, generate_key_file, public_key_path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keys", help="manage Ed25519 keys", description="Manage Ed25519 keys.")
    keys = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    generate = keys.add_parser(
        "generate",
        help="create a new Ed25519 key pair",
        description="Create an Ed25519 private key (PEM, mode 0600) and its public key beside it (.pub). "
        "Used for the agent's identity key (identity.key_file).",
    )
    generate.add_argument("--out", type=Path, required=True, help="path of the private key to write")
    generate.add_argument("--force", action="store_true", help="overwrite an existing key (destroys it)")
    generate.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    out: Path = args.out
    # Checked first: the write goes through a temp file beside `out`, and its
    # OSError would name that temp file instead of the path the user gave.
    if out.is_dir():
        raise KeyFileError(f"{out}: is a directory; --out takes the path of the key file to create")
    try:
        key = generate_key_file(out, overwrite=args.force)
    except OSError as exc:
        raise KeyFileError(f"{out}: cannot write the key: {exc.strerror or exc}") from None
    print(f"private key: {args.out}")
    print(f"public key:  {public_key_path(args.out)}")
    print(f"fingerprint: {key.fingerprint}")
    return ExitCode.SUCCESS
