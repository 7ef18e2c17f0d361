"""The `edge-agent` command."""
