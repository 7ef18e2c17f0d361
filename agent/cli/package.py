"""`edge-agent package ...`: read a package file (inspect, verify) and the
compliance officer's review of uploaded packages (pending, list, approve, reject).

Building and signing are the publisher's: `edge-sponsor package build|sign`
(the edge-agent-sponsor distribution).
Errors: ``PackageInputError``, ``TrustStoreError`` and ``UnknownPackageError`` (fix the
command line) are exit code 2; any other ``PackageError`` (package refused, store
unusable, decision not possible) is exit code 1.
"""

from __future__ import annotations

import argparse
import json
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.audit import events
from agent.audit.log import AuditLog
from agent.cli.exit_codes import ExitCode
from agent.cli.settings import add_config_arguments, check_identity_pin, identity_key, resolve_config
from agent.config import AgentConfig
from agent.governance.approvals import approval_in_force, listed_reviewer, review
from agent.governance.development import development_policy
from agent.governance.loader import load_policy
from agent.governance.model import Policy
from agent.governance.publishers import check_package_name, trust_store
from agent.identity.agent_key import load_key_file
from agent.packages import (
    DecisionError,
    DecisionKind,
    PackageLimits,
    PackageRejected,
    PackageStatus,
    PackageStore,
    StoredPackage,
    TrustedKey,
    TrustStore,
    TrustStoreError,
    parse_public_key,
    verify_package,
)
from agent.packages.inspection import inspect_package
from agent.packages.manifest import FeatureDecl, Manifest, OneHot
from agent.packages.plan_summary import plan_lines
from agent.packages.verification import read_package_bytes


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "package",
        help="inspect, verify and review packages (models and analysis plans)",
        description="Inspect and verify package files; list, approve and reject uploaded packages "
        "(compliance officers). Publishers build and sign packages with `edge-sponsor package`.",
    )
    commands = parser.add_subparsers(dest="package_command", required=True, metavar="COMMAND")
    inspect = commands.add_parser("inspect", help="show what a package declares (nothing is trusted)")
    inspect.add_argument("file", type=Path, metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    inspect.set_defaults(handler=run_inspect)

    verify = commands.add_parser(
        "verify",
        help="verify a package against public keys",
        description="Run every check the agent runs (archive, signatures, manifest, ONNX) against the given keys.",
    )
    verify.add_argument("file", type=Path, metavar="FILE")
    verify.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        required=True,
        metavar="PUB",
        help="publisher public key (PEM or base64 file); repeat for several",
    )
    verify.set_defaults(handler=run_verify)

    upload = commands.add_parser(
        "upload",
        help="store a package file on this agent (it then awaits review, as if a coordinator had uploaded it)",
        description="Verify a package (or analysis plan) file against the policy in force and store it, so that "
        "the hospital's reviewer can approve it before any coordinator runs it. Audited as package.uploaded "
        "by the local operator.",
    )
    upload.add_argument("file", type=Path, metavar="FILE")
    add_config_arguments(upload)
    upload.set_defaults(handler=run_upload)

    for name, text in (("pending", "packages awaiting review"), ("list", "every stored package")):
        listing = commands.add_parser(name, help=f"list {text}", description=f"List {text} on this agent.")
        listing.add_argument("--json", action="store_true", help="print JSON")
        add_config_arguments(listing)
        listing.set_defaults(handler=run_list, only_pending=name == "pending")

    approve = commands.add_parser("approve", help="approve a pending package (signed decision)")
    approve.add_argument("digest", metavar="DIGEST", help="sha256:<hex> as shown by `package pending`")
    approve.add_argument("--reason", default="", help="optional note recorded with the approval")
    _add_reviewer_arguments(approve)
    approve.set_defaults(handler=run_approve)

    reject = commands.add_parser("reject", help="reject a package, or withdraw an approval (signed decision)")
    reject.add_argument("digest", metavar="DIGEST")
    reject.add_argument("--reason", required=True, help="why; recorded and signed")
    _add_reviewer_arguments(reject)
    reject.set_defaults(handler=run_reject)


def _add_reviewer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reviewer-key", type=Path, required=True, help="the reviewer's Ed25519 private key")
    parser.add_argument("--reviewer", required=True, help="the reviewer's name, recorded and signed")
    add_config_arguments(parser)


# -- package files --------------------------------------------------------------


def _summary_lines(manifest: Manifest) -> list[str]:
    if manifest.plan is not None:
        return [
            f"  name:        {manifest.name} {manifest.version} (analysis plan)",
            f"  publisher:   {manifest.publisher}",
            f"  tasks:       {', '.join(k.value for k in manifest.task_kinds)}",
            *plan_lines(manifest),
            f"  description: {manifest.description.splitlines()[0] if manifest.description else '-'}",
        ]
    features = ", ".join(_feature(f) for f in manifest.features)
    return [
        f"  name:        {manifest.name} {manifest.version}",
        f"  publisher:   {manifest.publisher}",
        f"  tasks:       {', '.join(k.value for k in manifest.task_kinds)}",
        f"  parameters:  {', '.join(f'{p.name}{list(p.shape)}' for p in manifest.parameters)}",
        f"  features:    {features}",
        f"  label:       {manifest.label.kind.value} from {', '.join(manifest.label.columns)}",
        f"  metrics:     {_metrics(manifest) or '-'}",
        f"  graphs:      {', '.join(ref.file for ref in manifest.graphs.values())}",
        f"  description: {manifest.description.splitlines()[0] if manifest.description else '-'}",
    ]


def _feature(feature: FeatureDecl) -> str:
    """A feature as a reviewer reads it: its column, its preprocessing, and what a missing value
    becomes when not the default (the row dropped)."""
    text = feature.column if feature.preprocessing.kind == "none" else f"{feature.column}({feature.preprocessing.kind})"
    if feature.missing.impute and isinstance(feature.preprocessing, OneHot):
        text += " [missing: a category of its own, with a missing indicator]"
    elif feature.missing.impute:
        indicator = " and a missing indicator" if feature.missing.indicator else ""
        text += f" [missing: {feature.missing.value!r}{indicator}]"
    return text


def _metrics(manifest: Manifest) -> str:
    """The metrics as a reviewer reads them: each range, and a group once, as one bound on
    all its metrics together (and one block of noise)."""
    parts = [f"{m.name}[{m.low!r}, {m.high!r}]" for m in manifest.metrics if m.group is None]
    for group in manifest.metric_groups:
        first, last = manifest.metrics[group.members[0]], manifest.metrics[group.members[-1]]
        parts.append(
            f"group {group.name}: {len(group.members)} metrics {first.name} ... {last.name} "
            f"in [{first.low!r}, {first.high!r}], L2 norm at most {group.bound!r} per patient together"
        )
    return ", ".join(parts)


def run_inspect(args: argparse.Namespace) -> int:

    limits = PackageLimits()
    summary = inspect_package(read_package_bytes(args.file, limits), limits)
    if args.json:
        print(
            json.dumps(
                {
                    "digest": summary.digest,
                    "signatures": list(summary.signature_key_ids),
                    "manifest": summary.manifest.to_json(),
                },
                indent=2,
                sort_keys=True,
            )
        )
        return ExitCode.SUCCESS
    print(f"{args.file}: {summary.digest} ({summary.size} bytes), NOT verified")
    print("\n".join(_summary_lines(summary.manifest)))
    print(f"  signed by:   {', '.join(summary.signature_key_ids) or 'nobody'}")
    return ExitCode.SUCCESS


def _load_trusted_key(path: Path) -> TrustedKey:

    try:
        return TrustedKey.create(parse_public_key(path.read_bytes()), publisher=str(path))
    except OSError as exc:
        raise TrustStoreError(f"{path}: cannot read public key: {exc.strerror}") from None
    except TrustStoreError as exc:
        raise TrustStoreError(f"{path}: {exc}") from None


def run_verify(args: argparse.Namespace) -> int:
    trust = TrustStore(_load_trusted_key(path) for path in args.trusted_key)
    limits = PackageLimits()
    try:
        verified = verify_package(read_package_bytes(args.file, limits), trust, limits, datetime.now(UTC))
    except PackageRejected as exc:
        print(f"{args.file}: REJECTED [{exc.code.value}] {exc.message}")
        return ExitCode.FAILURE
    print(f"{args.file}: OK {verified.digest}")
    print("\n".join(_summary_lines(verified.manifest)))
    print(f"  signed by:   {', '.join(verified.signer_key_ids)}")
    for ignored in verified.ignored_signatures:
        print(f"  ignored:     {ignored.key_id} ({ignored.reason})")
    return ExitCode.SUCCESS


# -- agent side ----------------------------------------------------------------------


def _policy(config: AgentConfig) -> Policy:
    return development_policy() if config.policy_file is None else load_policy(config.policy_file)


def _status(store: PackageStore, package: StoredPackage, policy: Policy) -> tuple[PackageStatus, tuple[str, ...]]:
    """The status the agent acts on, and the stored decisions it ignores (why, in words). When the
    policy requires approval, the reviewers' signatures say, not the store's status column."""
    if not policy.packages.require_approval:
        return package.status, ()
    found = review(package, store.decisions(package.digest), policy.reviewers)
    return found.status, found.ignored


def _package_json(package: StoredPackage, status: PackageStatus, ignored: tuple[str, ...]) -> dict[str, Any]:
    return {
        "digest": package.digest,
        "name": package.name,
        "version": package.version,
        "status": status.value,
        "ignored_decisions": list(ignored),
        "size": package.size,
        "uploaded_at": package.uploaded_at.isoformat(),
        "signer_key_ids": list(package.signer_key_ids),
        "decision": None if package.decision is None else package.decision.to_json(),
        "manifest": package.manifest.to_json(),
    }


def run_list(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    store = PackageStore(config.state_dir / "packages")
    policy = _policy(config)
    listed = [(p, *_status(store, p, policy)) for p in store.list()]
    if args.only_pending:
        listed = [entry for entry in listed if entry[1] is PackageStatus.PENDING]
    if args.json:
        print(json.dumps([_package_json(*entry) for entry in listed], indent=2, sort_keys=True))
        return ExitCode.SUCCESS
    if not listed:
        print("no packages awaiting review" if args.only_pending else "no packages")
        return ExitCode.SUCCESS
    for package, status, ignored in listed:
        print(f"{package.digest}  {status.value.upper()}  uploaded {package.uploaded_at:%Y-%m-%d %H:%M}Z")
        print("\n".join(_summary_lines(package.manifest)))
        print(f"  signed by:   {', '.join(package.signer_key_ids)}")
        if package.decision is not None:
            d = package.decision
            print(
                f"  decision:    {d.decision.value} by {d.reviewer} ({d.reviewer_key_id}) at {d.time}"
                + (f": {d.reason}" if d.reason else "")
            )
        for problem in ignored:
            print(f"  ignored:     {problem}")
        print()
    return ExitCode.SUCCESS


LOCAL_OPERATOR = "local operator"
"""Who a package stored with `edge-agent package upload` was uploaded by, in the audit log."""


def run_upload(args: argparse.Namespace) -> int:
    """Verifies FILE as UploadPackage does and stores it; the audit log is opened first, as for a review."""
    config = resolve_config(args)
    agent_key, _ = identity_key(config)
    check_identity_pin(config, agent_key)
    policy = _policy(config)
    limits = PackageLimits()
    data = read_package_bytes(args.file, limits)
    store = PackageStore(config.state_dir / "packages")
    audit_log = AuditLog.open(config.audit.directory, agent_key, checkpoint_every=config.audit.checkpoint_every)
    with closing(audit_log) as audit:
        try:
            stored = store.add(
                data,
                trust_store(policy),
                limits,
                datetime.now(UTC),
                policy.packages.require_approval,
                check=lambda verified: check_package_name(verified, policy),
            )
        except PackageRejected as exc:
            # Audited as a coordinator's refused upload is: the compliance officer sees every attempt.
            audit.record(
                events.PackageRefused(
                    coordinator=LOCAL_OPERATOR,
                    outcome=exc.code.refusal.value,
                    rule=exc.code.value,
                    reason=exc.message,
                    bytes_received=len(data),
                )
            )
            raise
        audit.record(events.PackageUploaded.of(stored, coordinator=LOCAL_OPERATOR, policy_digest=policy.digest))
    print(f"{stored.digest}  {stored.status.value.upper()}")
    print("\n".join(_summary_lines(stored.manifest)))
    if stored.status is PackageStatus.PENDING:
        print(f"approve with: edge-agent package approve {stored.digest} --reviewer-key KEY --reviewer NAME")
    return ExitCode.SUCCESS


def run_approve(args: argparse.Namespace) -> int:
    return _review(args, DecisionKind.APPROVE)


def run_reject(args: argparse.Namespace) -> int:
    return _review(args, DecisionKind.REJECT)


_PAST = {DecisionKind.APPROVE: "approved", DecisionKind.REJECT: "rejected"}


def _review(args: argparse.Namespace, kind: DecisionKind) -> int:
    """Records a signed review decision and audits it in the agent's log.

    The audit log is opened first: a decision that could not be audited is not
    taken (run this as the service user, who can write the log).
    """
    config = resolve_config(args)
    # A development instance may not have served yet; it creates its key as serve would. The
    # decision's audit entry is signed with it: never with a key that is not the pinned one.
    agent_key, _ = identity_key(config)
    check_identity_pin(config, agent_key)
    reviewer_key = load_key_file(args.reviewer_key)
    policy = _policy(config)
    # Refused rather than warned about: the agent ignores a decision by an unlisted key, and
    # recording it would show a decision in listings that no task honours. Without required
    # approval the store's status alone still decides, as before, and any key may record it.
    required = policy.packages.require_approval
    if required and listed_reviewer(reviewer_key.public_bytes, policy.reviewers) is None:
        raise DecisionError(
            f"the reviewer key {reviewer_key.fingerprint} is not listed in the policy ({policy.source}), so the "
            "agent would ignore this decision: add it under [[reviewers]] (name, public_key) and reload the "
            "policy, or sign with a listed reviewer's key"
        )
    store = PackageStore(config.state_dir / "packages")
    stored = store.get(args.digest)
    if stored is not None and required:
        # An approval no listed reviewer signed (e.g. from before reviewers were listed) returns to
        # pending first, so that a listed reviewer can approve it now.
        approval_in_force(store, stored, policy.reviewers)
    audit_log = AuditLog.open(config.audit.directory, agent_key, checkpoint_every=config.audit.checkpoint_every)
    with closing(audit_log) as audit:
        now = datetime.now(UTC)
        if kind is DecisionKind.APPROVE:
            decision = store.approve(args.digest, reviewer_key, args.reviewer, now, reason=args.reason)
        else:
            decision = store.reject(args.digest, args.reason, reviewer_key, args.reviewer, now)
        package = store.get(decision.digest)
        event = events.PackageApproved if decision.decision is DecisionKind.APPROVE else events.PackageRejected
        audit.record(
            event(
                package_digest=decision.digest,
                package_name=None if package is None else package.name,
                package_version=None if package is None else package.version,
                reviewer=decision.reviewer,
                reviewer_key_id=decision.reviewer_key_id,
                reason=decision.reason,
            )
        )
    who = f"{decision.reviewer} ({decision.reviewer_key_id})"
    print(f"{_PAST[decision.decision]} {decision.digest} by {who} at {decision.time}")
    return ExitCode.SUCCESS
