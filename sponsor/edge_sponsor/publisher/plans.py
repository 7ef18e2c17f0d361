"""Analysis-plan packages: a plan and its manifest, signed like a model package.

A plan package has no graph: its manifest carries the plan (``plan``) and the range of
the one hyperparameter its kinds take (``noise_multiplier``). The agent computes the
plan's statistics itself; see docs/statistics.md for the plan format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.identity.agent_key import AgentKey
from agent.packages.canonical import CanonicalJsonError, canonical_json, parse_strict_json
from agent.packages.errors import PackageInputError, PackageRejected
from agent.packages.manifest import FORMAT_VERSION, Manifest, parse_manifest, served_kinds
from agent.packages.plan import parse_plan
from agent.packages.release_layout import check_release_size
from edge_sponsor.publisher.packaging import assemble_package

# The noise multipliers a plan package allows by default; the hospital's policy narrows them.
DEFAULT_NOISE_MULTIPLIER = {"min": 0.5, "max": 1000.0}


def plan_manifest_fields(
    plan: Mapping[str, Any],
    *,
    name: str,
    version: str,
    publisher: str,
    description: str | None = None,
    task_kinds: Sequence[str] | None = None,
    noise_multiplier: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The manifest of a plan package.

    ``task_kinds`` defaults to every plan kind the plan can serve (``dp_survival`` only
    with a survival outcome, ``dp_glm`` only with a model). Raises PackageInputError naming the plan field at fault.
    """
    try:
        parsed = parse_plan(plan)
    except PackageRejected as exc:
        raise PackageInputError(str(exc)) from None
    if task_kinds is None:
        task_kinds = [kind.value for kind in served_kinds(parsed)]
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "publisher": publisher,
        "description": description if description is not None else f"analysis plan {name}",
        "task_kinds": list(task_kinds),
        "plan": dict(plan),
        "hyperparameters": {"noise_multiplier": dict(noise_multiplier or DEFAULT_NOISE_MULTIPLIER)},
    }


def build_plan_package(fields: Mapping[str, Any], *, signers: Sequence[AgentKey] = ()) -> bytes:
    """A validated plan package (unsigned unless ``signers`` are given); PackageInputError names the problem."""
    checked_plan_manifest(fields)
    return assemble_package(fields, {}, signers)


def checked_plan_manifest(fields: Mapping[str, Any]) -> Manifest:
    """``fields`` parsed as the agent parses them; PackageInputError if the agent would refuse them."""
    try:
        manifest = parse_manifest(parse_strict_json(canonical_json(fields)))
    except CanonicalJsonError as exc:
        raise PackageInputError(f"the manifest cannot be written as canonical JSON: {exc}") from None
    except PackageRejected as exc:
        raise PackageInputError(f"the plan package would be refused: {exc}") from None
    if manifest.plan is None:
        raise PackageInputError("the manifest has no plan")
    try:
        check_release_size(manifest.plan, manifest.task_kinds)
    except PackageRejected as exc:
        raise PackageInputError(f"the plan package would be refused: {exc}") from None
    return manifest
