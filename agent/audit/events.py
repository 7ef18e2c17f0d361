"""The audit vocabulary: every kind of entry the agent writes, as one typed definition.

Each kind is a frozen dataclass below; writers construct one and hand it to an
`AuditSink`, so a kind or field name exists in exactly one place. Each field is
annotated with a `Field`: one concept, one name, one meaning in every kind
(`coordinator` is always the identity from a client certificate, `dataset`
always a dataset id). From these definitions come:

- docs/audit.md's tables (`markdown_tables`, compared by a test);
- the filters of `audit show` (`Role`: which fields identify a coordinator, a
  package, a dataset, a run or a task, in every kind);
- the report's columns (`Field.label`), and reading any field of any entry
  (`value`);
- reading logs written by earlier versions: `Field.was` lists the names a
  field had before. Old entries are read under their old names and never
  rewritten: the chain covers them byte for byte.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, TypedDict

from agent.refusal import Refusal
from agent.tasks.failure import FailureKind

if TYPE_CHECKING:  # only read, never built here: the store imports nothing of the audit log
    from agent.packages.store import StoredPackage

if typing.TYPE_CHECKING:
    from agent.audit.record import AuditRecord


class Role(enum.Enum):
    """What a field identifies; filters and the report find such fields in every kind."""

    COORDINATOR = "coordinator"
    DATASET = "dataset"
    PACKAGE = "package"
    RUN = "run"
    TASK = "task"


@dataclass(frozen=True)
class Field:
    """One concept of the vocabulary: the same name means the same thing in every kind."""

    name: str
    meaning: str
    label: str
    role: Role | None = None
    # Names this field was written under by earlier versions (read, never written).
    was: tuple[str, ...] = ()


# ------------------------------------------------------------------ fields

COORDINATOR = Field(
    "coordinator", "the caller's identity, from its client certificate", "Coordinator", Role.COORDINATOR, ("caller",)
)
DATASET = Field("dataset", "a dataset id", "Dataset", Role.DATASET)
BUDGET_GROUP = Field("budget_group", "the privacy budget group the dataset spends from", "Budget group")
PACKAGE_DIGEST = Field(
    "package_digest", "`sha256:<hex>` of the package archive", "Package digest", Role.PACKAGE, ("package",)
)
PACKAGE_NAME = Field("package_name", "the package's name, from its signed manifest", "Package name", was=("name",))
PACKAGE_VERSION = Field(
    "package_version", "the package's version, from its signed manifest", "Version", was=("version",)
)
PACKAGE_STATUS = Field(
    "package_status", "`pending` (awaits review) or `approved` after upload", "Package status", was=("status",)
)
PUBLISHER = Field("publisher", "the publisher named in the manifest", "Publisher")
SIGNER_KEY_IDS = Field("signer_key_ids", "ids of the trusted keys whose signatures verified", "Signed by")
SIZE_BYTES = Field("size_bytes", "the archive's size in bytes", "Bytes", was=("size",))
BYTES_RECEIVED = Field("bytes_received", "bytes received before the upload was refused", "Bytes received")
REVIEWER = Field("reviewer", "the reviewer's name, as they signed it", "Reviewer")
REVIEWER_KEY_ID = Field("reviewer_key_id", "id of the reviewer's signing key", "Reviewer key")
TASK_ID = Field("task_id", "the agent's id for an admitted task", "Task", Role.TASK)
TASK_KIND = Field("task_kind", "the task's kind, by its wire name (`dp_gradient`, …)", "Kind")
PURPOSE = Field("purpose", "the purpose the coordinator declared for the task", "Purpose")
RUN_ID = Field("run_id", "the coordinator's id for a run of tasks (one training or study)", "Run", Role.RUN)
ROUND = Field("round", "the round of the run this task belongs to", "Round")
CORRELATION_ID = Field("correlation_id", "the coordinator's own id for the request", "Correlation id")
PRIVACY_UNIT = Field(
    "privacy_unit",
    "the dataset's privacy unit column (e.g. `patient_id`): ε protects all of one unit's rows together; null "
    "(or absent: logs written before units existed): none declared, each row is its own unit and ε is per row",
    "Privacy unit",
)
MAX_ROWS_PER_UNIT = Field(
    "max_rows_per_unit",
    "the most rows of one unit a task reads (the policy's `max_rows_per_unit`); null where no unit is declared",
    "Max rows per unit",
)
UNIT_COUNT = Field(
    "unit_count",
    "the dataset's units at admission (patients, or rows where no unit is declared), bucketed as `[lower, upper)` "
    "like the row counts coordinators see",
    "Units",
)
HYPERPARAMETERS = Field(
    "hyperparameters", "object: the task's privacy and training settings (σ, q, C, steps, …)", "Hyperparameters"
)
EPSILON_RESERVED = Field(
    "epsilon_reserved", "the budget group's composed ε with this task counted, as reserved", "ε reserved"
)
EPSILON_CHARGED = Field(
    "epsilon_charged", "this task's share of the group's composed ε: how much it raised it (0 if refunded)", "ε"
)
BUDGET_EPSILON_SPENT = Field(
    "budget_epsilon_spent", "the ledger's composed ε for the budget group after this task (null if refunded)", "ε spent"
)
BUDGET_EPSILON_LIMIT = Field("budget_epsilon_limit", "the budget group's ε limit", "ε limit")
DELTA = Field("delta", "the budget group's δ", "δ")
RELEASED = Field("released", "names of the tensors and metrics sent to the coordinator", "Released")
FAILURE = Field(
    "failure",
    "how the task failed: " + ", ".join(f"`{kind.value}`" for kind in FailureKind) + " (agent/tasks/failure.py)",
    "Failure",
    was=("code",),
)
CHARGED = Field("charged", "whether the task's ε stays charged", "Charged")
RESERVED_AT = Field("reserved_at", "when the abandoned reservation was made", "Reserved at")
RULE = Field("rule", "id of the rule or check that decided (docs/policy.md, docs/packages.md)", "Rule", was=("code",))
REASON = Field("reason", "why, in words", "Reason", was=("error",))
METHOD = Field("method", "the RPC's name", "Method")
ALLOWED = Field("allowed", "whether the policy allowed the call", "Allowed")
OUTCOME = Field(
    "outcome",
    "`allowed`, or the refusal the caller was told: "
    + ", ".join(f"`{r.value}`" for r in Refusal)
    + " (0.1 wrote refused tasks' and uploads' gRPC status name as `status`)",
    "Outcome",
    was=("status",),
)
POLICY_DIGEST = Field(
    "policy_digest", "sha256 of the policy file in force", "Policy", was=("digest", "digest_in_force")
)
POLICY_SOURCE = Field("source", "the policy file", "Source")
AGENT_ID = Field("agent_id", "the agent's id from agent.toml", "Agent")
AGENT_VERSION = Field("version", "the agent's software version", "Agent version")
FINGERPRINT = Field("fingerprint", "SHA256 fingerprint of the agent's identity key", "Key")
PORT = Field("port", "the gRPC port served", "Port")
CONFIG = Field("config", "the configuration file, or `development defaults`", "Configuration")
COVERS_SEQ = Field("covers_seq", "seq of the entry the checkpoint vouches for", "Covers seq")
COVERS_HASH = Field("covers_hash", "hash of that entry", "Covers hash")
SIGNED_TIME = Field("signed_time", "the time inside the signed statement", "Signed")
SIGNER = Field("signer", "fingerprint of the signing key", "Signer")
SIGNATURE = Field("signature", "base64 Ed25519 signature", "Signature")
SIGNER_PUBLIC_KEY = Field("signer_public_key", "the signing key itself: base64 of its 32 raw bytes", "Signer key")
NEW_SIGNER = Field("new_signer", "fingerprint of the key that signs the log from this entry on", "New signer")
NEW_PUBLIC_KEY = Field("new_public_key", "that key itself: base64 of its 32 raw bytes", "New key")
CONDITION = Field(
    "condition",
    "what the log found when opened: `partial_line`, `head_behind` (notices after a crash); "
    "`head_missing`, `head_invalid`, `head_mismatch`, `log_truncated`, `unsigned_entries`, `signer_changed` (errors)",
    "Condition",
    was=("reason",),
)
SEVERITY = Field("severity", "`notice` or `error`", "Severity")
MESSAGE = Field("message", "what was found, in words", "Message")
FILE = Field("file", "the log file concerned", "File")
OFFSET = Field("offset", "byte offset the file was cut back to", "Offset")
DISCARDED_BYTES = Field("discarded_bytes", "how many bytes of a torn line were removed", "Discarded bytes")
DISCARDED_SHA256 = Field("discarded_sha256", "SHA-256 of the removed bytes", "Discarded sha256")
DISCARDED_PREVIEW = Field("discarded_preview", "their first 120 bytes, escaped", "Discarded preview")
LOG_SEQ = Field("log_seq", "seq of the last entry found in the log", "Log seq")
LOG_HASH = Field("log_hash", "hash of that entry", "Log hash")
HEAD_SEQ = Field("head_seq", "seq the head record named", "Head seq")
HEAD_HASH = Field("head_hash", "hash the head record named", "Head hash")
HEAD_FILE = Field("head_file", "file the head record named", "Head file")

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
# The head is signed by another key than the writer's: the identity key was
# replaced without `edge-agent keys rotate`, or the log re-signed by someone else.
RECOVERED_SIGNER_CHANGED = "signer_changed"
RECOVERED_NOTICE_REASONS = frozenset({RECOVERED_PARTIAL_LINE, RECOVERED_HEAD_BEHIND})


# ------------------------------------------------------------------ kinds


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One entry's content. Subclasses set `kind` and `when` and annotate every field with its Field."""

    kind: ClassVar[str]
    when: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        """The entry's fields as written: every field, in definition order (None where it does not apply)."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class AgentStarted(AuditEvent):
    kind = "agent.started"
    when = "the daemon is serving"
    version: Annotated[str, AGENT_VERSION]
    agent_id: Annotated[str, AGENT_ID]
    fingerprint: Annotated[str, FINGERPRINT]
    port: Annotated[int, PORT]
    config: Annotated[str, CONFIG]


@dataclass(frozen=True, kw_only=True)
class AgentStopped(AuditEvent):
    kind = "agent.stopped"
    when = "the daemon stopped serving"
    agent_id: Annotated[str, AGENT_ID]


@dataclass(frozen=True, kw_only=True)
class PolicyLoaded(AuditEvent):
    kind = "policy.loaded"
    when = "a policy came into force (start, SIGHUP, `policy reload`)"
    policy_digest: Annotated[str, POLICY_DIGEST]
    source: Annotated[str, POLICY_SOURCE]


@dataclass(frozen=True, kw_only=True)
class PolicyRejected(AuditEvent):
    kind = "policy.rejected"
    when = "a new policy was invalid; the one in force stays"
    reason: Annotated[str, REASON]
    policy_digest: Annotated[str, POLICY_DIGEST]


class Judgement(Protocol):
    """A policy decision as the log records it (agent.governance.decisions.Decision)."""

    @property
    def allowed(self) -> bool: ...

    @property
    def outcome(self) -> str: ...

    @property
    def rule(self) -> str: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True, kw_only=True)
class RpcDecision(AuditEvent):
    kind = "rpc.decision"
    when = "every RPC the policy decides on, allowed or denied"
    method: Annotated[str, METHOD]
    coordinator: Annotated[str, COORDINATOR]
    allowed: Annotated[bool, ALLOWED]
    outcome: Annotated[str, OUTCOME]
    rule: Annotated[str, RULE]
    reason: Annotated[str, REASON]
    dataset: Annotated[str | None, DATASET] = None
    package_digest: Annotated[str | None, PACKAGE_DIGEST] = None
    task_kind: Annotated[str | None, TASK_KIND] = None
    correlation_id: Annotated[str | None, CORRELATION_ID] = None
    policy_digest: Annotated[str, POLICY_DIGEST]

    @classmethod
    def of(
        cls,
        decision: Judgement,
        *,
        method: str,
        coordinator: str,
        policy_digest: str,
        dataset: str | None = None,
        package_digest: str | None = None,
        task_kind: str | None = None,
        correlation_id: str | None = None,
    ) -> RpcDecision:
        return cls(
            method=method,
            coordinator=coordinator,
            allowed=decision.allowed,
            outcome=decision.outcome,
            rule=decision.rule,
            reason=decision.reason,
            dataset=dataset,
            package_digest=package_digest,
            task_kind=task_kind,
            correlation_id=correlation_id,
            policy_digest=policy_digest,
        )


@dataclass(frozen=True, kw_only=True)
class PackageUploaded(AuditEvent):
    kind = "package.uploaded"
    when = (
        "a package was stored, uploaded by a coordinator or by the hospital (`edge-agent package upload`, "
        "coordinator `local operator`); its signatures, trust and graphs passed every check"
    )
    coordinator: Annotated[str, COORDINATOR]
    package_digest: Annotated[str, PACKAGE_DIGEST]
    package_name: Annotated[str, PACKAGE_NAME]
    package_version: Annotated[str, PACKAGE_VERSION]
    publisher: Annotated[str, PUBLISHER]
    signer_key_ids: Annotated[tuple[str, ...], SIGNER_KEY_IDS]
    package_status: Annotated[str, PACKAGE_STATUS]
    size_bytes: Annotated[int, SIZE_BYTES]
    policy_digest: Annotated[str, POLICY_DIGEST]

    @classmethod
    def of(cls, package: StoredPackage, *, coordinator: str, policy_digest: str) -> PackageUploaded:
        """The entry for ``package`` as stored, uploaded by ``coordinator`` under the policy ``policy_digest``."""
        return cls(
            coordinator=coordinator,
            package_digest=package.digest,
            package_name=package.name,
            package_version=package.version,
            publisher=package.manifest.publisher,
            signer_key_ids=tuple(package.signer_key_ids),
            package_status=package.status.value,
            size_bytes=package.size,
            policy_digest=policy_digest,
        )


@dataclass(frozen=True, kw_only=True)
class PackageRefused(AuditEvent):
    kind = "package.refused"
    when = (
        "an upload (a coordinator's, or `edge-agent package upload`) was refused by an automatic check "
        "(size, digest, signature, trust, graph, name); nothing stored"
    )
    coordinator: Annotated[str, COORDINATOR]
    outcome: Annotated[str, OUTCOME]
    rule: Annotated[str, RULE]
    reason: Annotated[str, REASON]
    bytes_received: Annotated[int, BYTES_RECEIVED]


@dataclass(frozen=True, kw_only=True)
class ReviewerDecisionEvent(AuditEvent):
    """What a reviewer's signed decision on a package records."""

    package_digest: Annotated[str, PACKAGE_DIGEST]
    package_name: Annotated[str | None, PACKAGE_NAME]
    package_version: Annotated[str | None, PACKAGE_VERSION]
    reviewer: Annotated[str, REVIEWER]
    reviewer_key_id: Annotated[str, REVIEWER_KEY_ID]
    reason: Annotated[str | None, REASON]


@dataclass(frozen=True, kw_only=True)
class PackageApproved(ReviewerDecisionEvent):
    kind = "package.approved"
    when = "a reviewer approved a package for local use (`package approve`)"


@dataclass(frozen=True, kw_only=True)
class PackageRejected(ReviewerDecisionEvent):
    kind = "package.rejected"
    when = "a reviewer rejected a package (`package reject`)"


@dataclass(frozen=True, kw_only=True)
class PackageApprovalHonoured(ReviewerDecisionEvent):
    kind = "package.approval_honoured"
    when = (
        "the agent first accepted a listed reviewer's signed approval for a task (once per approval; also one "
        "restored from a backup or written without `package approve`)"
    )


@dataclass(frozen=True, kw_only=True)
class TaskRefused(AuditEvent):
    kind = "task.refused"
    when = (
        "a task the policy allowed was refused before it ran (unknown or unapproved package, budget, rate or "
        "concurrency limit); nothing charged"
    )
    coordinator: Annotated[str, COORDINATOR]
    dataset: Annotated[str, DATASET]
    package_digest: Annotated[str, PACKAGE_DIGEST]
    task_kind: Annotated[str, TASK_KIND]
    purpose: Annotated[str | None, PURPOSE] = None
    run_id: Annotated[str | None, RUN_ID] = None
    round: Annotated[int | None, ROUND] = None
    outcome: Annotated[str, OUTCOME]
    rule: Annotated[str, RULE]
    reason: Annotated[str, REASON]
    correlation_id: Annotated[str | None, CORRELATION_ID] = None


@dataclass(frozen=True, kw_only=True)
class AdmittedTaskEvent(AuditEvent):
    """What every entry about an admitted task says of it (`TaskAbout`, for writers)."""

    task_id: Annotated[str, TASK_ID]
    coordinator: Annotated[str, COORDINATOR]
    dataset: Annotated[str, DATASET]
    budget_group: Annotated[str, BUDGET_GROUP]
    package_digest: Annotated[str, PACKAGE_DIGEST]
    package_name: Annotated[str, PACKAGE_NAME]
    package_version: Annotated[str, PACKAGE_VERSION]
    task_kind: Annotated[str, TASK_KIND]
    purpose: Annotated[str | None, PURPOSE]
    run_id: Annotated[str | None, RUN_ID]
    round: Annotated[int | None, ROUND]
    correlation_id: Annotated[str | None, CORRELATION_ID]
    # What one unit of ε protects; absent from logs of versions before the privacy unit (read as null).
    privacy_unit: Annotated[str | None, PRIVACY_UNIT] = None
    max_rows_per_unit: Annotated[int | None, MAX_ROWS_PER_UNIT] = None
    unit_count: Annotated[tuple[int, int] | None, UNIT_COUNT] = None


class TaskAbout(TypedDict):
    """AdmittedTaskEvent's fields, built once per task and passed to each of its events (checked below)."""

    task_id: str
    coordinator: str
    dataset: str
    budget_group: str
    package_digest: str
    package_name: str
    package_version: str
    task_kind: str
    purpose: str | None
    run_id: str | None
    round: int | None
    correlation_id: str | None
    privacy_unit: str | None
    max_rows_per_unit: int | None
    unit_count: tuple[int, int] | None


@dataclass(frozen=True, kw_only=True)
class TaskStarted(AdmittedTaskEvent):
    kind = "task.started"
    when = "a task was admitted and its budget reserved"
    hyperparameters: Annotated[Mapping[str, float | int | bool], HYPERPARAMETERS]
    epsilon_reserved: Annotated[float, EPSILON_RESERVED]
    delta: Annotated[float, DELTA]


@dataclass(frozen=True, kw_only=True)
class TaskFinished(AdmittedTaskEvent):
    kind = "task.finished"
    when = "a task's result left the agent; its privacy cost was committed first"
    epsilon_charged: Annotated[float, EPSILON_CHARGED]
    budget_epsilon_spent: Annotated[float, BUDGET_EPSILON_SPENT]
    budget_epsilon_limit: Annotated[float, BUDGET_EPSILON_LIMIT]
    delta: Annotated[float, DELTA]
    released: Annotated[tuple[str, ...], RELEASED]


@dataclass(frozen=True, kw_only=True)
class TaskFailed(AdmittedTaskEvent):
    kind = "task.failed"
    when = "an admitted task ended without a result; says whether its reservation stays charged"
    failure: Annotated[str, FAILURE]
    rule: Annotated[str | None, RULE]
    reason: Annotated[str, REASON]
    charged: Annotated[bool, CHARGED]
    epsilon_charged: Annotated[float, EPSILON_CHARGED]
    budget_epsilon_spent: Annotated[float | None, BUDGET_EPSILON_SPENT]
    budget_epsilon_limit: Annotated[float, BUDGET_EPSILON_LIMIT]
    delta: Annotated[float, DELTA]


@dataclass(frozen=True, kw_only=True)
class TaskAbandoned(AuditEvent):
    kind = "task.abandoned"
    when = "at start-up: a reservation left by an agent that stopped mid-task; counted as spent"
    task_id: Annotated[str, TASK_ID]
    coordinator: Annotated[str, COORDINATOR]
    dataset: Annotated[str, DATASET]
    budget_group: Annotated[str, BUDGET_GROUP]
    reserved_at: Annotated[str, RESERVED_AT]
    charged: Annotated[bool, CHARGED]
    correlation_id: Annotated[str | None, CORRELATION_ID]


@dataclass(frozen=True, kw_only=True)
class ChainStatement(AuditEvent):
    """An entry the agent's key signs over the chain up to the entry before it."""

    covers_seq: Annotated[int, COVERS_SEQ]
    covers_hash: Annotated[str, COVERS_HASH]
    signed_time: Annotated[str, SIGNED_TIME]
    signer: Annotated[str, SIGNER]
    signature: Annotated[str, SIGNATURE]


@dataclass(frozen=True, kw_only=True)
class AuditCheckpoint(ChainStatement):
    kind = "audit.checkpoint"
    when = "signed statement of the chain so far (written by the log itself)"


@dataclass(frozen=True, kw_only=True)
class AuditRecovered(AuditEvent):
    kind = "audit.recovered"
    when = "the log repaired or noticed damage when opened (written by the log itself)"
    condition: Annotated[str, CONDITION]
    severity: Annotated[str, SEVERITY]
    message: Annotated[str, MESSAGE]
    file: Annotated[str | None, FILE] = None
    offset: Annotated[int | None, OFFSET] = None
    discarded_bytes: Annotated[int | None, DISCARDED_BYTES] = None
    discarded_sha256: Annotated[str | None, DISCARDED_SHA256] = None
    discarded_preview: Annotated[str | None, DISCARDED_PREVIEW] = None
    log_seq: Annotated[int | None, LOG_SEQ] = None
    log_hash: Annotated[str | None, LOG_HASH] = None
    head_seq: Annotated[int | None, HEAD_SEQ] = None
    head_hash: Annotated[str | None, HEAD_HASH] = None
    head_file: Annotated[str | None, HEAD_FILE] = None


@dataclass(frozen=True, kw_only=True)
class AuditKeyRotated(ChainStatement):
    kind = "audit.key_rotated"
    when = "the identity key changed (`keys rotate`): the old key signs the chain so far and names the new one"
    signer_public_key: Annotated[str, SIGNER_PUBLIC_KEY]
    new_signer: Annotated[str, NEW_SIGNER]
    new_public_key: Annotated[str, NEW_PUBLIC_KEY]
    reason: Annotated[str | None, REASON] = None


# The vocabulary: every kind the agent writes. A new kind is a class above and a line here.
EVENTS: tuple[type[AuditEvent], ...] = (
    AgentStarted,
    AgentStopped,
    PolicyLoaded,
    PolicyRejected,
    RpcDecision,
    PackageUploaded,
    PackageRefused,
    PackageApproved,
    PackageRejected,
    PackageApprovalHonoured,
    TaskRefused,
    TaskStarted,
    TaskFinished,
    TaskFailed,
    TaskAbandoned,
    AuditCheckpoint,
    AuditRecovered,
    AuditKeyRotated,
)


def fields_of(event: type[AuditEvent]) -> tuple[Field, ...]:
    """The Fields of a kind, in definition order; raises TypeError for a field without one."""
    hints = typing.get_type_hints(event, include_extras=True)
    found = []
    for item in dataclasses.fields(event):
        metadata = getattr(hints[item.name], "__metadata__", ())
        described = [m for m in metadata if isinstance(m, Field)]
        if len(described) != 1 or described[0].name != item.name:
            raise TypeError(f"{event.__name__}.{item.name} must be annotated with exactly one Field of that name")
        found.append(described[0])
    return tuple(found)


BY_KIND: Mapping[str, type[AuditEvent]] = {event.kind: event for event in EVENTS}
SCHEMA: Mapping[str, tuple[Field, ...]] = {event.kind: fields_of(event) for event in EVENTS}
KINDS = frozenset(BY_KIND)
FAMILIES = frozenset(kind.split(".", 1)[0] for kind in KINDS)
if len(BY_KIND) != len(EVENTS):
    raise TypeError("two audit event classes share a kind")
if tuple(TaskAbout.__annotations__) != tuple(item.name for item in dataclasses.fields(AdmittedTaskEvent)):
    raise TypeError("TaskAbout must list AdmittedTaskEvent's fields, in order")


def _every_field() -> Mapping[str, Field]:
    everything: dict[str, Field] = {}
    for fields in SCHEMA.values():
        for item in fields:
            if everything.setdefault(item.name, item) is not item:
                raise TypeError(f"audit field {item.name!r} is defined twice with different meanings")
    return everything


FIELDS: Mapping[str, Field] = _every_field()


def with_role(role: Role) -> tuple[Field, ...]:
    """Every field that identifies `role`, in any kind."""
    return tuple(item for item in FIELDS.values() if item.role is role)


def value(record: AuditRecord, field: Field) -> Any:
    """`field`'s value in `record`, read under its current or an earlier name; None if absent.

    Earlier names are read only for kinds that have the field, so that
    `version` is a package's version in package.uploaded and the agent's in
    agent.started.
    """
    fields = record.fields
    if field.name in fields:
        return fields[field.name]
    known = SCHEMA.get(record.kind)
    if known is not None and field not in known:
        return None
    for old in field.was:
        # An older name is read only where the kind has no current field of that name, and, where
        # two of its fields once had it (task.failed's `failure` and `rule` were both `code` in
        # different kinds), by the first of them.
        if old in fields and (known is None or _first_to_claim(known, old) is field):
            return fields[old]
    return None


def _first_to_claim(known: tuple[Field, ...], old: str) -> Field | None:
    if any(item.name == old for item in known):
        return None
    return next((item for item in known if old in item.was), None)


def normalised(record: AuditRecord) -> dict[str, Any]:
    """The entry's fields under current names (its kind's fields first, then any others as stored)."""
    known = SCHEMA.get(record.kind, ())
    result = {item.name: value(record, item) for item in known}
    read = {name for item in known for name in (item.name, *item.was) if name in record.fields}
    for name, stored in record.fields.items():
        if name not in read and name not in result:
            result[name] = stored
    return result


def markdown_tables() -> str:
    """docs/audit.md's tables of kinds and fields, as that page must show them."""
    lines = ["| kind | when | fields |", "|---|---|---|"]
    for event in EVENTS:
        names = ", ".join(f"`{item.name}`" for item in SCHEMA[event.kind])
        lines.append(f"| `{event.kind}` | {event.when} | {names} |")
    lines += ["", "| field | meaning | identifies | earlier name |", "|---|---|---|---|"]
    for item in sorted(FIELDS.values(), key=lambda f: f.name):
        role = item.role.value if item.role else ""
        was = ", ".join(f"`{old}`" for old in item.was)
        lines.append(f"| `{item.name}` | {item.meaning} | {role} | {was} |")
    return "\n".join(lines) + "\n"
