"""One vocabulary of refusals: why the agent says no, in terms a caller can act on.

Policy decisions, package checks and task admission all refuse with a
`Refusal`; agent/server/status.py turns each into its gRPC status code, in the
one place that imports grpc for it. The values are what the audit log records
as a refusal's `outcome` (beside `allowed` for a request the policy let
through), so they are stable: never rename one.
"""

from __future__ import annotations

import enum


class Refusal(enum.Enum):
    # The request itself is malformed or incomplete: fix it and ask again.
    INVALID = "invalid"
    # The caller may not do this at all: the policy or the trust store says no.
    FORBIDDEN = "forbidden"
    # No such package or dataset, as far as this caller is allowed to know.
    NOT_FOUND = "not_found"
    # Allowed in principle, not in the present state (a package awaiting review, an
    # expired agreement, a dataset that cannot be read now, a version conflict).
    PRECONDITION = "precondition"
    # A budget, rate or capacity limit is used up for now.
    EXHAUSTED = "exhausted"
    # The agent cannot serve it now (its privacy ledger cannot be written): try later.
    UNAVAILABLE = "unavailable"
