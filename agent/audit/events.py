"""The audit event vocabulary: kinds, and the fields each carries.

docs/audit.md documents the same list for compliance officers; a test keeps
the two in step. Field names shared across kinds mean the same thing
everywhere, so that `audit show --coordinator/--dataset/--package` can filter
any kind:

- `caller` / `coordinator`: the coordinator's identity from its client certificate;
- `dataset`: a dataset id; `package_digest`: "sha256:<hex>" of a package;
- `correlation_id`: the coordinator's id for the request, echoed for its records.
"""

from __future__ import annotations

from dataclasses import dataclass

AGENT_STARTED = "agent.started"
AGENT_STOPPED = "agent.stopped"
POLICY_LOADED = "policy.loaded"
POLICY_REJECTED = "policy.rejected"
RPC_DECISION = "rpc.decision"
PACKAGE_UPLOADED = "package.uploaded"
PACKAGE_VERIFIED = "package.verified"
PACKAGE_REJECTED = "package.rejected"
PACKAGE_APPROVED = "package.approved"
PACKAGE_REJECTED_BY_REVIEWER = "package.rejected_by_reviewer"
TASK_STARTED = "task.started"
TASK_FINISHED = "task.finished"
TASK_FAILED = "task.failed"
CONFIG_CHANGED = "config.changed"
AUDIT_CHECKPOINT = "audit.checkpoint"
AUDIT_RECOVERED = "audit.recovered"

# Reasons of audit.recovered. The first two happen after a crash and are
# reported by the verifier as notices; the others mean the log was damaged
# or tampered with and stay errors.
RECOVERED_PARTIAL_LINE = "partial_line"
RECOVERED_HEAD_BEHIND = "head_behind"
RECOVERED_HEAD_MISSING = "head_missing"
RECOVERED_HEAD_INVALID = "head_invalid"
RECOVERED_HEAD_MISMATCH = "head_mismatch"
RECOVERED_LOG_TRUNCATED = "log_truncated"
RECOVERED_UNSIGNED_ENTRIES = "unsigned_entries"
RECOVERED_NOTICE_REASONS = frozenset({RECOVERED_PARTIAL_LINE, RECOVERED_HEAD_BEHIND})

# Field names the query filters look at.
COORDINATOR_FIELDS = ("caller", "coordinator")
DATASET_FIELDS = ("dataset",)
PACKAGE_FIELDS = ("package_digest",)


@dataclass(frozen=True)
class EventKind:
    kind: str
    description: str
    fields: tuple[str, ...]


VOCABULARY: tuple[EventKind, ...] = (
    EventKind(AGENT_STARTED, "the daemon is serving", ("version", "agent_id", "fingerprint", "port", "config")),
    EventKind(AGENT_STOPPED, "the daemon stopped serving", ("agent_id",)),
    EventKind(POLICY_LOADED, "a governance policy came into force", ("digest", "source")),
    EventKind(POLICY_REJECTED, "a new policy was invalid; the old one stays", ("error", "digest_in_force")),
    EventKind(
        RPC_DECISION,
        "the policy decision on one RPC",
        ("method", "caller", "allowed", "outcome", "rule", "reason", "dataset", "policy_digest", "correlation_id"),
    ),
    EventKind(
        PACKAGE_UPLOADED,
        "a coordinator uploaded a package",
        ("caller", "package_name", "package_version", "package_digest", "size_bytes", "correlation_id"),
    ),
    EventKind(
        PACKAGE_VERIFIED,
        "a package's signature and graph passed the checks",
        (
            "package_name",
            "package_version",
            "package_digest",
            "publisher",
            "publisher_fingerprint",
            "approval_required",
        ),
    ),
    EventKind(
        PACKAGE_REJECTED,
        "a package failed a check (signature, trust, ONNX validation)",
        ("package_name", "package_digest", "check", "reason", "caller"),
    ),
    EventKind(
        PACKAGE_APPROVED,
        "a reviewer approved a package for local use",
        ("package_name", "package_version", "package_digest", "reviewer", "comment"),
    ),
    EventKind(
        PACKAGE_REJECTED_BY_REVIEWER,
        "a reviewer refused a package",
        ("package_name", "package_version", "package_digest", "reviewer", "comment"),
    ),
    EventKind(
        TASK_STARTED,
        "a task was admitted and its budget reserved",
        (
            "task_id",
            "coordinator",
            "dataset",
            "package_digest",
            "task_kind",
            "purpose",
            "hyperparameters",
            "epsilon_reserved",
            "delta",
            "budget_group",
            "correlation_id",
        ),
    ),
    EventKind(
        TASK_FINISHED,
        "a task's result left the agent; its privacy cost is committed",
        (
            "task_id",
            "coordinator",
            "dataset",
            "package_digest",
            "task_kind",
            "purpose",
            "hyperparameters",
            "epsilon_charged",
            "delta",
            "budget_epsilon_spent",
            "budget_epsilon_limit",
            "budget_group",
            "correlation_id",
        ),
    ),
    EventKind(
        TASK_FAILED,
        "a task failed; says whether its reservation was kept",
        (
            "task_id",
            "coordinator",
            "dataset",
            "package_digest",
            "task_kind",
            "error",
            "epsilon_charged",
            "correlation_id",
        ),
    ),
    EventKind(CONFIG_CHANGED, "the agent's configuration changed", ("digest", "source", "changes")),
    EventKind(
        AUDIT_CHECKPOINT,
        "signed statement of the chain so far (written by the log itself)",
        ("covers_seq", "covers_hash", "signed_time", "signer", "signature"),
    ),
    EventKind(
        AUDIT_RECOVERED,
        "the log repaired or noticed damage when opened (written by the log itself)",
        (
            "reason",
            "severity",
            "message",
            "file",
            "offset",
            "discarded_bytes",
            "discarded_sha256",
            "discarded_preview",
            "log_seq",
            "log_hash",
            "head_seq",
            "head_hash",
            "head_file",
        ),
    ),
)

KINDS = frozenset(event.kind for event in VOCABULARY)
