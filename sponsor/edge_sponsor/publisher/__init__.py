"""Publisher tooling: model builders and packaging for Edge Agent packages.

Part of the edge-agent-sponsor distribution; the daemon itself never imports this package.
"""
