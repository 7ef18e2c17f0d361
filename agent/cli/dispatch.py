"""The frame of `edge-agent` and the sponsor's `edge-sponsor`: the top-level parser, and
running a command with its errors turned into one line and an exit code.

Shared so that both programs report errors the same way: no traceback reaches
the person at the terminal; known errors print one line naming the file, key or
value at fault; anything unexpected prints a short message and, with
EDGE_AGENT_DEBUG=1, the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from agent import __version__
from agent.cli.exit_codes import ExitCode
from agent.cli.settings import UsageError
from agent.config import ConfigError
from agent.datasets import DatasetError
from agent.identity.agent_key import KeyFileError
from agent.packages import PackageError, PackageInputError

# What commands of both programs raise: input the person can fix (a command line, a
# config, key or package file), exit code 2; the environment or the data, exit code 1.
# PackageInputError is a PackageError: usage errors are matched first.
COMMON_USAGE_ERRORS: tuple[type[Exception], ...] = (ConfigError, UsageError, KeyFileError, PackageInputError)
COMMON_FAILURE_ERRORS: tuple[type[Exception], ...] = (DatasetError, PackageError)

# A command module's ``add_parser``: registers its subcommand (and handler) on the program's subparsers.
AddParser = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def program_parser(prog: str, description: str, commands: Sequence[AddParser]) -> argparse.ArgumentParser:
    """The top-level parser of ``prog``: ``--version`` and one subcommand per entry of ``commands``,
    in that order (a subcommand is required).

    Both programs print the agent's version: edge-agent-sponsor requires edge-agent of its own version.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in commands:
        add_parser(subparsers)
    return parser


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    usage_errors: tuple[type[Exception], ...],
    failure_errors: tuple[type[Exception], ...],
) -> int:
    """Parses ``argv`` (``sys.argv`` when None) and runs the chosen subcommand's handler.

    Returns the handler's exit code, or: ``ExitCode.USAGE`` for ``usage_errors`` and
    :data:`COMMON_USAGE_ERRORS` (input the person can fix), ``ExitCode.FAILURE`` for
    ``failure_errors``, :data:`COMMON_FAILURE_ERRORS`, ``OSError`` and anything
    unexpected, ``ExitCode.INTERRUPTED`` for Ctrl-C. Every message is prefixed
    with ``parser.prog``. argparse's own usage errors exit (code 2) before any handler runs.
    """
    args = parser.parse_args(argv)
    program = parser.prog
    usage_errors = (*COMMON_USAGE_ERRORS, *usage_errors)
    failure_errors = (*COMMON_FAILURE_ERRORS, *failure_errors)
    try:
        return int(args.handler(args))
    except usage_errors as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except failure_errors as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{program}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except Exception as exc:
        if os.environ.get("EDGE_AGENT_DEBUG"):
            traceback.print_exc()
        print(
            f"{program}: internal error ({type(exc).__name__}: {exc}); "
            "rerun with EDGE_AGENT_DEBUG=1 for details and report it",
            file=sys.stderr,
        )
        return ExitCode.FAILURE
