"""The coordinator side of the integration run: dials the packaged agent over mutual TLS from the host.

Usage: coordinator.py ADDRESS PKI_DIR  — prints one JSON line with what it saw;
exits non-zero (with the agent's error) if a call fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge_sponsor.coordinator.client import AgentClient, AgentRpcError, ClientCredentials


def main(address: str, pki: Path) -> int:
    credentials = ClientCredentials.from_files(pki / "ca.crt", pki / "coordinator.crt", pki / "coordinator.key")
    try:
        with AgentClient(address, credentials, server_name="localhost", timeout=10) as client:
            client.wait_until_ready(timeout=20)
            info = client.get_info()
            seen = {
                "agent_id": info.agent_id,
                "health": client.health(),
                "datasets": sorted(d.id for d in client.list_datasets()),
            }
    except AgentRpcError as exc:
        print(f"coordinator: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(seen, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
