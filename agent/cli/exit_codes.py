"""Exit codes of `edge-agent`, documented in docs/operators.md.

systemd treats any non-zero code as a failure; the distinction matters for
the people and scripts reading it: 2 means fix the input, 1 means look at
the environment (ports, files, the remote agent).
"""

from enum import IntEnum


class ExitCode(IntEnum):
    SUCCESS = 0
    # Runtime failure: cannot listen, a dataset unreadable, a remote call failed.
    FAILURE = 1
    # Bad command line, bad config or policy file, bad key file: nothing was started or changed.
    USAGE = 2
    # Interrupted by Ctrl-C in an interactive command.
    INTERRUPTED = 130
