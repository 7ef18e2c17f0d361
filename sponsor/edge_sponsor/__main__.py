"""`python -m edge_sponsor` is the same as the `edge-sponsor` command."""

import sys

from edge_sponsor.cli.main import main

sys.exit(main())
