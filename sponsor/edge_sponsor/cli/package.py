"""`edge-sponsor package build|sign`: the publisher's tools.

A publisher builds a package from a zoo model or from its own single-example
gradient graph, and signs it; the hospital inspects, verifies and reviews it
with `edge-agent package inspect|verify|pending|approve|reject`.
Exit codes: 0 done; 2 the command line, a key or the package is at fault
(``PackageInputError``); 1 the package would be refused (``PackageError``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from agent.cli.exit_codes import ExitCode
from agent.durable import write_public
from agent.identity.agent_key import load_key_file
from agent.packages import PackageInputError, PackageLimits, package_digest
from agent.packages.canonical import CanonicalJsonError, parse_strict_json
from agent.packages.verification import read_package_bytes
from agent.tasks.kinds import registry
from edge_sponsor.publisher import zoo
from edge_sponsor.publisher.packaging import (
    DEFAULT_HYPERPARAMETERS,
    FeatureColumn,
    build_package,
    feature_width,
    sign_package,
    zoo_graphs,
    zoo_manifest_fields,
)
from edge_sponsor.publisher.zoo import ZooModel, score_histogram
from edge_sponsor.statistics.table_one import OVERALL, POOLED

MODELS = ("logistic", "linear", "mlp", "weibull")
COLUMN_TYPES = ("float64", "float32", "int64", "int32", "bool", "string")


class PackageCommandError(PackageInputError):
    """The command line of a package command is inconsistent (exit code 2)."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "package",
        help="build and sign model packages",
        description="Build and sign model packages. Inspect and verify them with `edge-agent package`.",
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
    zoo.add_argument(
        "--standardise",
        action="append",
        default=[],
        metavar="COL=MEAN:STD|COL",
        help="standardise COL with these constants, or (COL alone) with the pooled mean and SD of --standardise-from",
    )
    zoo.add_argument(
        "--standardise-from",
        type=Path,
        metavar="REPORT",
        help="the JSON report of `edge-sponsor study describe` (Table 1): private constants, already paid for",
    )
    zoo.add_argument("--one-hot", action="append", default=[], metavar="COL=CAT1,CAT2,...")
    zoo.add_argument(
        "--impute",
        action="append",
        default=[],
        metavar="COL=VALUE",
        help="a numeric column's missing value (null, NaN, infinity) becomes VALUE, in the column's own units "
        "(default: the row is dropped)",
    )
    zoo.add_argument(
        "--missing-indicator",
        action="append",
        default=[],
        metavar="COL",
        help="with --impute COL: one more feature, 1 where COL was missing; alone for a --one-hot COL: its "
        "missing value becomes a category of its own (the row is kept, its category slots 0, the indicator 1)",
    )
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
    zoo.add_argument(
        "--score-bins",
        type=int,
        default=0,
        metavar="K",
        help="logistic: evaluate with a histogram of the predicted risk in K bins per outcome (2-30), "
        "from which the coordinator reports AUC and calibration with their DP error; weibull (with "
        "--time-bins): of the risk of the event by --time-scale, for Harrell's C-index (default: none)",
    )
    zoo.add_argument(
        "--time-bins",
        type=int,
        default=0,
        metavar="T",
        help="weibull, with --score-bins: the C-index's time grid, T equal bins of [0, --horizon) "
        "(2 x T x K at most 240 cells)",
    )
    zoo.add_argument(
        "--horizon",
        type=float,
        metavar="TIME",
        help="weibull, with --time-bins: where the time grid's last bin starts to hold all later times "
        "(default 2 x --time-scale)",
    )
    zoo.add_argument(
        "--time-scale",
        type=float,
        metavar="TIME",
        help="weibull (required): a typical follow-up time in the data's own unit (e.g. 365 for a year in days); "
        "the starting model puts its median survival time there",
    )
    zoo.add_argument("--name", help="package name, <publisher>/<model>")
    zoo.add_argument("--version", help="semantic version, e.g. 1.0.0")
    zoo.add_argument("--publisher", help="publisher id (lowercase), the prefix of the name")
    zoo.add_argument("--description", default=None)
    zoo.add_argument("--task-kinds", default=",".join(registry.graph_kinds()))
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




def _pairs(values: Sequence[str], option: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for value in values:
        column, sep, rest = value.partition("=")
        if not sep or not column or not rest:
            raise PackageCommandError(f"{option} expects COL=VALUE, got {value!r}")
        result[column] = rest
    return result


def _constants_from(report: Path | None, columns: Sequence[str]) -> dict[str, str]:
    """``MEAN:STD`` for each of ``columns`` from a study describe report's pooled Table 1 column
    over all strata: the noisy mean and the SD derived from the noisy sums (post-processing
    of releases already charged; nothing more is spent)."""
    if report is None:
        raise PackageCommandError(f"--standardise {columns[0]} without MEAN:STD needs --standardise-from REPORT")
    try:
        table = json.loads(report.read_text(encoding="utf-8"))["table_one"]
        pooled = next(c for c in table["columns"] if c["site"] == POOLED and c["stratum"] == OVERALL)
        summaries = {v["column"]: v for v in pooled["variables"] if "sd" in v}
    except OSError as exc:
        raise PackageCommandError(f"{report}: cannot read the report: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, StopIteration):
        raise PackageCommandError(
            f"{report}: not the JSON report of `edge-sponsor study describe` with a pooled Table 1"
        ) from None
    constants: dict[str, str] = {}
    for column in columns:
        summary = summaries.get(column)
        if summary is None:
            raise PackageCommandError(f"{report}: Table 1 has no numeric variable {column!r}")
        mean, sd = (summary.get("mean") or {}).get("value"), summary.get("sd")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (mean, sd)) or not sd > 0:
            raise PackageCommandError(
                f"{report}: the pooled mean or SD of {column!r} is withheld or not positive; declare MEAN:STD"
            )
        constants[column] = f"{mean!r}:{sd!r}"
    return constants


def _split(text: str | None, option: str) -> list[str]:
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise PackageCommandError(f"{option} is required")
    return items


def _feature_columns(args: argparse.Namespace) -> list[FeatureColumn]:

    columns = _split(args.features, "--features")
    from_report = [value for value in args.standardise if "=" not in value]
    standardise = _pairs([value for value in args.standardise if "=" in value], "--standardise")
    if from_report:
        standardise |= _constants_from(args.standardise_from, from_report)
    one_hot = _pairs(args.one_hot, "--one-hot")
    types = _pairs(args.feature_type, "--feature-type")
    imputations = _pairs(args.impute, "--impute")
    unknown = (set(standardise) | set(one_hot) | set(types) | set(imputations)) - set(columns)
    if unknown:
        raise PackageCommandError(f"columns not in --features: {', '.join(sorted(unknown))}")
    for column in args.missing_indicator:
        if column not in imputations and column not in one_hot:
            raise PackageCommandError(
                f"--missing-indicator {column}: needs --impute {column}=VALUE, or --one-hot {column}=CATEGORIES"
            )
    for column in imputations:
        if column in one_hot or types.get(column, "float64") in ("string", "bool"):
            raise PackageCommandError(f"--impute {column}: missing values can be imputed in numeric columns only")
    imputed = {column: _imputed_value(column, text) for column, text in imputations.items()}
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
            indicator = column in args.missing_indicator
            features.append(FeatureColumn(column, dtype, "one_hot", categories=tuple(categories), indicator=indicator))
        else:
            features.append(FeatureColumn(column, dtype))
        if column in imputed:
            features[-1] = replace(
                features[-1], impute=imputed[column], indicator=column in args.missing_indicator
            )
    return features


def _imputed_value(column: str, text: str) -> float:
    """The VALUE of ``--impute COL=VALUE``: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise PackageCommandError(f"--impute {column}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise PackageCommandError(f"--impute {column}: the value must be finite, got {text}")
    return value


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
        if args.score_bins and args.model not in ("logistic", "weibull"):
            raise PackageCommandError(
                f"--score-bins: only --model logistic and weibull have a score histogram, not {args.model}"
            )
        if (args.time_bins or args.horizon is not None) and not (args.model == "weibull" and args.score_bins):
            raise PackageCommandError("--time-bins and --horizon go with --model weibull and --score-bins")
        try:
            if args.score_bins and args.model == "weibull":
                score_histogram.checked_survival_grid(args.time_bins, args.score_bins)
            elif args.score_bins:
                score_histogram.checked_bins(args.score_bins)
        except ValueError as exc:
            raise PackageCommandError(f"--score-bins/--time-bins: {exc}") from None
        if args.model == "logistic":
            return zoo.build_logistic_regression(num_features, args.l2, score_bins=args.score_bins)
        if args.model == "linear":
            return zoo.build_linear_regression(num_features, args.l2)
        if args.model == "weibull":
            if args.time_scale is None:
                raise PackageCommandError(
                    "--model weibull needs --time-scale: a typical follow-up time in the data's own unit "
                    "(e.g. 365 for a year in days; `edge-sponsor study survival` estimates it privately)"
                )
            return zoo.build_weibull_survival(
                num_features,
                args.l2,
                time_scale=args.time_scale,
                score_bins=args.score_bins,
                time_bins=args.time_bins,
                horizon=args.horizon,
            )
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
    print(f"digest:  {package_digest(archive)}")
    print(f"signed:  {', '.join(k.fingerprint for k in signers) or 'no (run edge-sponsor package sign)'}")
    return ExitCode.SUCCESS



def run_sign(args: argparse.Namespace) -> int:

    key = load_key_file(args.key)
    limits = PackageLimits()
    signed = sign_package(read_package_bytes(args.file, limits), key, limits)
    out = args.out or args.file
    write_public(out, signed)
    print(f"signed {out} with {key.fingerprint}")
    print(f"digest: {package_digest(signed)}")
    return ExitCode.SUCCESS

