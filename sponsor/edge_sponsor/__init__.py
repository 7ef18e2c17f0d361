"""The sponsor's side of Edge Agent: reference coordinator, publisher tooling and demo.

Shipped as the edge-agent-sponsor distribution (sponsor/pyproject.toml), apart from
the hospital's daemon: the daemon never imports this package, and its .deb and
wheel do not carry it.
"""
