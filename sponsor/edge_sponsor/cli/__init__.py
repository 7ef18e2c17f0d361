"""The `edge-sponsor` command."""
