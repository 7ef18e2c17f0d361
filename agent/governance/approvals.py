"""Whether a package may run when the policy requires approval: reviewers' signatures decide.

The package store's status column is only a cache for listings: whoever can write the
state directory can edit it with one SQL ``UPDATE``. So a package runs only on an
approval that a reviewer listed in the policy's ``[[reviewers]]`` signed over the
package's digest (agent.packages.decisions). A rejection wins over any approval: a
valid rejection by a listed reviewer, or the store's column saying ``rejected`` (a cache
may refuse, never grant).

Approvals are per package digest, not per dataset. The reviewer vets what a package
computes; where it may be used (datasets, columns, purposes, coordinators) is the
policy's to say, and the policy is checked on every task anyway. It also keeps every
decision signed before this check existed valid: one statement format, no re-approval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from agent.audit.events import PackageApprovalHonoured
from agent.audit.sink import AuditSink
from agent.governance.model import ReviewerRule
from agent.packages import (
    Decision,
    DecisionError,
    DecisionKind,
    PackageStatus,
    PackageStore,
    StoredPackage,
    verify_decision,
)

MISSING_RULE = "package.approval_missing"
REJECTED_RULE = "package.rejected"


@dataclass(frozen=True)
class Review:
    status: PackageStatus
    # The listed reviewer's approval the package runs on; None unless status is APPROVED.
    approval: Decision | None
    # Why it may not run (said to the coordinator) and the refusal's rule; empty when approved.
    reason: str
    rule: str
    # The stored decisions that do not count, and why (for the hospital's own listings).
    ignored: tuple[str, ...]


def review(package: StoredPackage, decisions: Sequence[Decision], reviewers: Sequence[ReviewerRule]) -> Review:
    """What the signatures say of ``package``, given its stored ``decisions``."""
    listed = {reviewer.public_key for reviewer in reviewers}
    valid: list[Decision] = []
    ignored: list[str] = []
    for decision in decisions:
        problem = _problem(decision, package.digest, listed)
        if problem is None:
            valid.append(decision)
        else:
            ignored.append(problem)
    rejected = any(d.decision is DecisionKind.REJECT for d in valid)
    if rejected or package.status is PackageStatus.REJECTED:
        return Review(PackageStatus.REJECTED, None, "was rejected by the hospital", REJECTED_RULE, tuple(ignored))
    approval = next((d for d in valid if d.decision is DecisionKind.APPROVE), None)
    if approval is not None:
        return Review(PackageStatus.APPROVED, approval, "", "", tuple(ignored))
    reason = "awaits approval by a reviewer the hospital's policy lists"
    return Review(PackageStatus.PENDING, None, reason, MISSING_RULE, tuple(ignored))


def _problem(decision: Decision, digest: str, listed: set[bytes]) -> str | None:
    who = f"the {decision.decision.value} decision by {decision.reviewer} ({decision.reviewer_key_id})"
    if decision.digest != digest:
        return f"{who} is about another package ({decision.digest})"
    if decision.reviewer_public_key not in listed:
        return f"{who} is signed by a key the policy's [[reviewers]] do not list"
    try:
        # The embedded key is a listed one (checked above), so this checks the listed key's signature.
        verify_decision(decision)
    except DecisionError as exc:
        return f"{who} does not verify: {exc}"
    return None


def listed_reviewer(key: bytes, reviewers: Sequence[ReviewerRule]) -> ReviewerRule | None:
    return next((reviewer for reviewer in reviewers if reviewer.public_key == key), None)


def approval_in_force(store: PackageStore, package: StoredPackage, reviewers: Sequence[ReviewerRule]) -> Review:
    """Reviews ``package`` from its stored decisions, and brings the store's status column (a
    cache that listings show) in line: an approval no listed reviewer signed returns to pending."""
    result = review(package, store.decisions(package.digest), reviewers)
    if result.status is not package.status:
        store.cache_status(package.digest, result.status)
    return result


def honour(store: PackageStore, package: StoredPackage, approval: Decision, audit: AuditSink, now: datetime) -> None:
    """A task is let through on ``approval``: the first time, audit it (``package approve`` audits
    its own approvals, but one restored from a backup or written to the store otherwise was not)."""
    event = PackageApprovalHonoured(
        package_digest=package.digest, package_name=package.name, package_version=package.version,
        reviewer=approval.reviewer, reviewer_key_id=approval.reviewer_key_id, reason=approval.reason,
    )
    store.honour(approval, now, lambda: audit.record(event))
