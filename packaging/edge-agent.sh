#!/bin/sh
# /usr/bin/edge-agent: the agent's command, from the virtual environment that
# the package's postinst builds with this machine's python3.
set -e
venv=/usr/lib/edge-agent/venv
if [ ! -x "$venv/bin/edge-agent" ]; then
    echo "edge-agent: $venv is missing; reinstall with: dpkg-reconfigure edge-agent" >&2
    exit 1
fi
exec "$venv/bin/edge-agent" "$@"
