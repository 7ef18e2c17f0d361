"""`edge-agent package ...`: publisher tools (build, sign, inspect, verify) and the
compliance officer's review (pending, list, approve, reject).

Errors: ``PackageInputError``, ``TrustStoreError`` and ``UnknownPackageError`` (fix the
command line) are exit code 2; any other ``PackageError`` (package refused, store
unusable, decision not possible) is exit code 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.audit.log import AuditLog
from agent.cli.exit_codes import ExitCode
from agent.cli.settings import add_config_arguments, identity_key, resolve_config
from agent.durable import write_public
from agent.identity.agent_key import load_key_file
from agent.packages import (
    DecisionKind,
    PackageInputError,
    PackageLimits,
    PackageRejected,
    PackageStore,
    StoredPackage,
    TrustedKey,
    TrustStore,
    TrustStoreError,
    parse_public_key,
    verify_package,
)
from agent.packages.canonical import CanonicalJsonError, parse_strict_json
from agent.packages.manifest import Manifest
from agent.packages.verification import read_package_bytes
from agent.publisher import zoo
from agent.publisher.packaging import (
    DEFAULT_HYPERPARAMETERS,
    FeatureColumn,
    build_package,
    feature_width,
    inspect_package,
    sign_package,
    zoo_graphs,
    zoo_manifest_fields,
)
from agent.publisher.zoo import ZooModel

MODELS = ("logistic", "linear", "mlp", "weibull")
COLUMN_TYPES = ("float64", "float32", "int64", "int32", "bool", "string")


class PackageCommandError(PackageInputError):
    """The command line of a package command is inconsistent (exit code 2)."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "package",
        help="build, sign, verify and review model packages",
        description="Build, sign, inspect and verify model packages (publishers); list, approve and reject "
        "uploaded packages (compliance officers).",
    )
    commands = parser.add_subparsers(dest="package_command", required=True, metavar="COMMAND")
    _add_build(commands)

    sign = commands.add_parser(
        "sign",
        help="add a signature to a package",
        description="Add an Ed25519 signature to a package's envelope; the manifest and graphs are unchanged.",
    )
    sign.add_argument("file", type=Path, metavar="FILE")
    sign.add_argument("--key", type=Path, required=True, help="Ed25519 private key (edge-agent keys generate)")
    sign.add_argument("--out", type=Path, default=None, help="where to write the signed package (default: FILE)")
    sign.set_defaults(handler=run_sign)

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


def _add_build(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = commands.add_parser(
        "build",
        help="build an (unsigned) package",
        description="Build a package from a zoo model (--model) or from your own single-example gradient graph "
        "(--grad-onnx with --manifest-fields). The package is validated like the agent does.",
    )
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", choices=MODELS, help="zoo model")
    source.add_argument("--grad-onnx", type=Path, metavar="FILE", help="your single-example gradient graph")
    build.add_argument("--out", type=Path, required=True, metavar="FILE", help="package file to write")
    build.add_argument(
        "--sign-key", type=Path, action="append", default=[], metavar="KEY", help="also sign with this key (repeatable)"
    )
    zoo = build.add_argument_group("zoo models")
    zoo.add_argument("--features", help="comma-separated feature columns, in graph order")
    zoo.add_argument("--label", help="label column (weibull: time,event)")
    zoo.add_argument("--standardise", action="append", default=[], metavar="COL=MEAN:STD")
    zoo.add_argument("--one-hot", action="append", default=[], metavar="COL=CAT1,CAT2,...")
    zoo.add_argument(
        "--feature-type",
        action="append",
        default=[],
        metavar="COL=TYPE",
        help=f"source column type, one of {', '.join(COLUMN_TYPES)} (default float64; one-hot: string)",
    )
    zoo.add_argument("--hidden", default="64,64", help="mlp: hidden layer widths (default 64,64; '' for none)")
    zoo.add_argument("--classes", type=int, default=2, help="mlp: number of classes (default 2)")
    zoo.add_argument("--activation", default="relu", choices=("relu", "tanh"), help="mlp activation")
    zoo.add_argument("--l2", type=float, default=0.0, help="weight decay baked into the gradient")
    zoo.add_argument("--name", help="package name, <publisher>/<model>")
    zoo.add_argument("--version", help="semantic version, e.g. 1.0.0")
    zoo.add_argument("--publisher", help="publisher id (lowercase), the prefix of the name")
    zoo.add_argument("--description", default=None)
    zoo.add_argument("--task-kinds", default="dp_gradient,dp_local_training,dp_evaluate")
    zoo.add_argument(
        "--bound",
        action="append",
        default=[],
        metavar="NAME=MIN:MAX",
        help="hyperparameter bound (clip_norm, noise_multiplier, sampling_rate, local_steps, learning_rate)",
    )
    zoo.add_argument("--with-inference-model", action="store_true", help="include model.onnx with initial parameters")
    own = build.add_argument_group("your own graphs")
    own.add_argument(
        "--manifest-fields",
        metavar="JSON|@FILE",
        help="manifest fields (everything except graphs) as JSON, or @file holding it",
    )
    own.add_argument("--eval-onnx", type=Path, metavar="FILE")
    own.add_argument("--model-onnx", type=Path, metavar="FILE")
    build.set_defaults(handler=run_build)


# -- publisher side ------------------------------------------------------------------


def _pairs(values: Sequence[str], option: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for value in values:
        column, sep, rest = value.partition("=")
        if not sep or not column or not rest:
            raise PackageCommandError(f"{option} expects COL=VALUE, got {value!r}")
        result[column] = rest
    return result


def _split(text: str | None, option: str) -> list[str]:
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise PackageCommandError(f"{option} is required")
    return items


def _feature_columns(args: argparse.Namespace) -> list[FeatureColumn]:

    columns = _split(args.features, "--features")
    standardise = _pairs(args.standardise, "--standardise")
    one_hot = _pairs(args.one_hot, "--one-hot")
    types = _pairs(args.feature_type, "--feature-type")
    unknown = (set(standardise) | set(one_hot) | set(types)) - set(columns)
    if unknown:
        raise PackageCommandError(f"columns not in --features: {', '.join(sorted(unknown))}")
    features = []
    for column in columns:
        dtype = types.get(column, "string" if column in one_hot else "float64")
        if dtype not in COLUMN_TYPES:
            raise PackageCommandError(f"--feature-type {column}: {dtype!r} is not one of {', '.join(COLUMN_TYPES)}")
        if column in standardise and column in one_hot:
            raise PackageCommandError(f"column {column!r} cannot be both standardised and one-hot encoded")
        if column in standardise:
            mean, sep, std = standardise[column].partition(":")
            try:
                features.append(FeatureColumn(column, dtype, "standardise", float(mean), float(std)))
            except ValueError:
                raise PackageCommandError(f"--standardise {column}: expected MEAN:STD numbers") from None
            if not sep:
                raise PackageCommandError(f"--standardise {column}: expected MEAN:STD")
        elif column in one_hot:
            raw = [c for c in one_hot[column].split(",") if c]
            categories: list[str | int | bool] = list(raw)
            if dtype in ("int64", "int32"):
                try:
                    categories = [int(c) for c in raw]
                except ValueError:
                    raise PackageCommandError(f"--one-hot {column}: categories must be integers") from None
            elif dtype == "bool":
                categories = [c.lower() == "true" for c in raw]
            features.append(FeatureColumn(column, dtype, "one_hot", categories=tuple(categories)))
        else:
            features.append(FeatureColumn(column, dtype))
    return features


def _bounds(values: Sequence[str]) -> dict[str, dict[str, float]]:

    bounds = {name: dict(b) for name, b in DEFAULT_HYPERPARAMETERS.items()}
    for name, text in _pairs(values, "--bound").items():
        if name not in bounds:
            raise PackageCommandError(f"--bound: unknown hyperparameter {name!r}")
        low, sep, high = text.partition(":")
        try:
            bounds[name] = {"min": float(low), "max": float(high)}
        except ValueError:
            raise PackageCommandError(f"--bound {name}: expected MIN:MAX numbers") from None
        if not sep:
            raise PackageCommandError(f"--bound {name}: expected MIN:MAX")
    return bounds


def _zoo_model(args: argparse.Namespace, num_features: int) -> ZooModel:

    try:
        if args.model == "logistic":
            return zoo.build_logistic_regression(num_features, args.l2)
        if args.model == "linear":
            return zoo.build_linear_regression(num_features, args.l2)
        if args.model == "weibull":
            return zoo.build_weibull_survival(num_features, args.l2)
        hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
        return zoo.build_mlp_classifier(num_features, hidden, args.classes, args.activation, args.l2)
    except ValueError as exc:
        raise PackageCommandError(f"--model {args.model}: {exc}") from None


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PackageCommandError(f"{path}: cannot read {what}: {exc.strerror}") from None


def run_build(args: argparse.Namespace) -> int:

    signers = [load_key_file(path) for path in args.sign_key]
    if args.model is not None:
        for option in ("name", "version", "publisher"):
            if not getattr(args, option):
                raise PackageCommandError(f"--{option} is required with --model")
        features = _feature_columns(args)
        model = _zoo_model(args, feature_width(features))
        fields = zoo_manifest_fields(
            model,
            name=args.name,
            version=args.version,
            publisher=args.publisher,
            features=features,
            label_columns=_split(args.label, "--label"),
            description=args.description,
            task_kinds=_split(args.task_kinds, "--task-kinds"),
            hyperparameters=_bounds(args.bound),
        )
        graphs = zoo_graphs(model, inference_seed=0 if args.with_inference_model else None)
    else:
        if not args.manifest_fields:
            raise PackageCommandError("--grad-onnx needs --manifest-fields")
        text = args.manifest_fields
        raw = _read_file(Path(text[1:]), "manifest fields") if text.startswith("@") else text.encode("utf-8")
        try:
            fields = parse_strict_json(raw)
        except CanonicalJsonError as exc:
            raise PackageCommandError(f"--manifest-fields: {exc}") from None
        if not isinstance(fields, dict):
            raise PackageCommandError("--manifest-fields must be a JSON object")
        graphs = {"grad": _read_file(args.grad_onnx, "the gradient graph")}
        if args.eval_onnx is not None:
            graphs["eval"] = _read_file(args.eval_onnx, "the eval graph")
        if args.model_onnx is not None:
            graphs["model"] = _read_file(args.model_onnx, "the inference model")
    archive = build_package(fields, graphs, signers=signers)
    write_public(args.out, archive)
    print(f"package: {args.out}")
    print(f"digest:  sha256:{_sha256(archive)}")
    print(f"signed:  {', '.join(k.fingerprint for k in signers) or 'no (run edge-agent package sign)'}")
    return ExitCode.SUCCESS


def _sha256(data: bytes) -> str:

    return hashlib.sha256(data).hexdigest()


def run_sign(args: argparse.Namespace) -> int:

    key = load_key_file(args.key)
    limits = PackageLimits()
    signed = sign_package(read_package_bytes(args.file, limits), key, limits)
    out = args.out or args.file
    write_public(out, signed)
    print(f"signed {out} with {key.fingerprint}")
    print(f"digest: sha256:{_sha256(signed)}")
    return ExitCode.SUCCESS


def _summary_lines(manifest: Manifest) -> list[str]:
    features = ", ".join(
        f"{f.column}({f.preprocessing.kind})" if f.preprocessing.kind != "none" else f.column for f in manifest.features
    )
    return [
        f"  name:        {manifest.name} {manifest.version}",
        f"  publisher:   {manifest.publisher}",
        f"  tasks:       {', '.join(k.value for k in manifest.task_kinds)}",
        f"  parameters:  {', '.join(f'{p.name}{list(p.shape)}' for p in manifest.parameters)}",
        f"  features:    {features}",
        f"  label:       {manifest.label.kind.value} from {', '.join(manifest.label.columns)}",
        f"  metrics:     {', '.join(f'{m.name}[{m.low:g}, {m.high:g}]' for m in manifest.metrics) or '-'}",
        f"  graphs:      {', '.join(ref.file for ref in manifest.graphs.values())}",
        f"  description: {manifest.description.splitlines()[0] if manifest.description else '-'}",
    ]


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


def _store(args: argparse.Namespace) -> PackageStore:
    return PackageStore(resolve_config(args).state_dir / "packages")


def _package_json(package: StoredPackage) -> dict[str, Any]:
    return {
        "digest": package.digest,
        "name": package.name,
        "version": package.version,
        "status": package.status.value,
        "size": package.size,
        "uploaded_at": package.uploaded_at.isoformat(),
        "signer_key_ids": list(package.signer_key_ids),
        "decision": None if package.decision is None else package.decision.to_json(),
        "manifest": package.manifest.to_json(),
    }


def run_list(args: argparse.Namespace) -> int:
    store = _store(args)
    packages = store.pending() if args.only_pending else store.list()
    if args.json:
        print(json.dumps([_package_json(p) for p in packages], indent=2, sort_keys=True))
        return ExitCode.SUCCESS
    if not packages:
        print("no packages awaiting review" if args.only_pending else "no packages")
        return ExitCode.SUCCESS
    for package in packages:
        print(f"{package.digest}  {package.status.value.upper()}  uploaded {package.uploaded_at:%Y-%m-%d %H:%M}Z")
        print("\n".join(_summary_lines(package.manifest)))
        print(f"  signed by:   {', '.join(package.signer_key_ids)}")
        if package.decision is not None:
            d = package.decision
            print(
                f"  decision:    {d.decision.value} by {d.reviewer} ({d.reviewer_key_id}) at {d.time}"
                + (f": {d.reason}" if d.reason else "")
            )
        print()
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
    reviewer_key = load_key_file(args.reviewer_key)
    store = PackageStore(config.state_dir / "packages")
    # A development instance may not have served yet; it creates its key as serve would.
    agent_key, _ = identity_key(config)
    audit_log = AuditLog.open(config.audit.directory, agent_key, checkpoint_every=config.audit.checkpoint_every)
    with closing(audit_log) as audit:
        now = datetime.now(UTC)
        if kind is DecisionKind.APPROVE:
            decision = store.approve(args.digest, reviewer_key, args.reviewer, now, reason=args.reason)
        else:
            decision = store.reject(args.digest, args.reason, reviewer_key, args.reviewer, now)
        package = store.get(decision.digest)
        audit.append(
            f"package.{_PAST[decision.decision]}",
            package=decision.digest,
            name=None if package is None else package.name,
            version=None if package is None else package.version,
            reviewer=decision.reviewer,
            reviewer_key_id=decision.reviewer_key_id,
            reason=decision.reason,
        )
    who = f"{decision.reviewer} ({decision.reviewer_key_id})"
    print(f"{_PAST[decision.decision]} {decision.digest} by {who} at {decision.time}")
    return ExitCode.SUCCESS
