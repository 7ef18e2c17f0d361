"""`python -m agent` is the same as the `edge-agent` command."""

import os
import sys

# Before anything imports grpc: gRPC's C core otherwise writes its own
# plain-text lines into the agent's JSON log stream. An operator can still
# override it (GRPC_VERBOSITY=debug) to see gRPC's diagnostics.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from agent.cli.main import main  # after the environment is set

sys.exit(main())
