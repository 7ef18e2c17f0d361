"""Runs a parsed command and turns its errors into one line and an exit code.

Shared by `edge-agent` and the sponsor's `edge-sponsor`, so that both report
errors the same way: no traceback reaches the person at the terminal; known
errors print one line naming the file, key or value at fault; anything
unexpected prints a short message and, with EDGE_AGENT_DEBUG=1, the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from agent.cli.exit_codes import ExitCode


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    usage_errors: tuple[type[Exception], ...],
    failure_errors: tuple[type[Exception], ...],
) -> int:
    """Parses ``argv`` (``sys.argv`` when None) and runs the chosen subcommand's handler.

    Returns the handler's exit code, or: ``ExitCode.USAGE`` for ``usage_errors`` (input
    the person can fix), ``ExitCode.FAILURE`` for ``failure_errors``, ``OSError`` and
    anything unexpected, ``ExitCode.INTERRUPTED`` for Ctrl-C. Every message is prefixed
    with ``parser.prog``. argparse's own usage errors exit (code 2) before any handler runs.
    """
    args = parser.parse_args(argv)
    program = parser.prog
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
