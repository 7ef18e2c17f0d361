"""`edge-sponsor plan build|sign`: analysis plans as signed packages.

A statistician writes the plan (JSON, docs/statistics.md), builds it into a package and
signs it; the hospital inspects, verifies and reviews it as any package, with
`edge-agent package inspect|verify|pending|approve|reject`, which show what the plan releases.
Exit codes: 0 done; 2 the command line, the plan file or a key is at fault.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli.exit_codes import ExitCode
from agent.durable import write_public
from agent.identity.agent_key import load_key_file
from agent.packages import PackageInputError, package_digest
from agent.packages.canonical import CanonicalJsonError, parse_strict_json
from agent.tasks.kinds import registry
from edge_sponsor.cli.package import run_sign
from edge_sponsor.publisher.plans import DEFAULT_NOISE_MULTIPLIER, build_plan_package, plan_manifest_fields


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="build and sign analysis plans (statistics the hospitals compute)",
        description="Build an analysis plan (JSON, see docs/statistics.md) into a package and sign it. "
        "Hospitals review it with `edge-agent package inspect|verify|pending|approve`.",
    )
    commands = parser.add_subparsers(dest="plan_command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", help="build a plan package from a plan file")
    build.add_argument("plan", type=Path, metavar="PLAN.json", help="the analysis plan")
    build.add_argument("--out", type=Path, required=True, metavar="FILE", help="package file to write")
    build.add_argument("--name", required=True, help="package name, <publisher>/<plan>")
    build.add_argument("--version", required=True, help="semantic version, e.g. 1.0.0")
    build.add_argument("--publisher", required=True, help="publisher id (lowercase), the prefix of the name")
    build.add_argument("--description", default=None)
    build.add_argument(
        "--task-kinds",
        default=None,
        help=f"comma-separated, of {', '.join(registry.plan_kinds())} (default: every one the plan can serve)",
    )
    build.add_argument(
        "--noise-multiplier",
        default=None,
        metavar="MIN:MAX",
        help=f"the noise multipliers tasks may use (default {DEFAULT_NOISE_MULTIPLIER['min']:g}:"
        f"{DEFAULT_NOISE_MULTIPLIER['max']:g}; the hospital's policy narrows them)",
    )
    build.add_argument("--sign-key", type=Path, action="append", default=[], metavar="KEY", help="sign as well")
    build.set_defaults(handler=run_build)

    sign = commands.add_parser("sign", help="add a signature to a plan package")
    sign.add_argument("file", type=Path, metavar="FILE")
    sign.add_argument("--key", type=Path, required=True, help="Ed25519 private key (edge-agent keys generate)")
    sign.add_argument("--out", type=Path, default=None, help="where to write the signed package (default: FILE)")
    sign.set_defaults(handler=run_sign)


def _plan_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PackageInputError(f"cannot read the plan ({exc.strerror or exc})") from None
    try:
        plan = parse_strict_json(raw)
    except CanonicalJsonError as exc:
        raise PackageInputError(f"not valid JSON: {exc}") from None
    if not isinstance(plan, dict):
        raise PackageInputError("the plan must be a JSON object")
    return plan


def _noise_range(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return {"min": float(low), "max": float(high)}
    except ValueError:
        raise PackageInputError(f"--noise-multiplier must be MIN:MAX, got {text!r}") from None


def run_build(args: argparse.Namespace) -> int:
    signers = [load_key_file(path) for path in args.sign_key]
    kinds = None if args.task_kinds is None else [k.strip() for k in args.task_kinds.split(",") if k.strip()]
    try:
        fields = plan_manifest_fields(
            _plan_file(args.plan),
            name=args.name,
            version=args.version,
            publisher=args.publisher,
            description=args.description,
            task_kinds=kinds,
            noise_multiplier=_noise_range(args.noise_multiplier),
        )
        archive = build_plan_package(fields, signers=signers)
    except PackageInputError as exc:
        raise PackageInputError(f"{args.plan}: {exc}") from None
    write_public(args.out, archive)
    print(f"plan package: {args.out}")
    print(f"digest:       {package_digest(archive)}")
    print(f"signed:       {', '.join(k.fingerprint for k in signers) or 'no (run edge-sponsor plan sign)'}")
    return ExitCode.SUCCESS
