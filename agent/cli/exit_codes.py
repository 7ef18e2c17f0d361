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
    # `serve`: the identity key is not the one agent.toml pins. Not a typo to fix
    # and retry: the key file was replaced, so systemd must not restart in a loop
    # (RestartPreventExitStatus=3) and monitoring can tell it from the rest.
    IDENTITY_MISMATCH = 3
    # Interrupted by Ctrl-C in an interactive command.
    INTERRUPTED = 130
