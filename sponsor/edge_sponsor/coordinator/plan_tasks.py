"""Running an analysis plan across the federation: one statistics task per site.

Each site gets the plan package (uploaded; the hospital's reviewer must have approved
it), then one ``dp_describe`` or ``dp_survival`` task on the federation file's dataset
with the chosen noise multiplier. What comes back is checked against the plan's release
layout (exactly the declared numbers, each finite or withheld) before an estimator sees
it. A site that refuses or fails is reported with the agent's words; the others count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.errors import PackageRejected
from agent.packages.inspection import inspect_package
from agent.packages.limits import PackageLimits
from agent.packages.manifest import Manifest, TaskKind
from agent.packages.plan import AnalysisPlan
from agent.packages.release_layout import ReleaseLayout, layout
from agent.packages.verification import package_digest
from agent.tasks.kinds import registry
from agent.tasks.kinds.profile import TaskProfile
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError
from edge_sponsor.coordinator.federation import Federation, Site
from edge_sponsor.statistics.releases import SiteRelease

# Uploading a plan is a short call; the task itself reads the whole dataset once.
UPLOAD_SECONDS = 60.0
TASK_STALL_SECONDS = 120.0


class PlanPackageError(Exception):
    """The file is not a usable plan package; the message names the file and the problem."""


@dataclass(frozen=True)
class PlanPackage:
    archive: bytes
    digest: str
    manifest: Manifest
    plan: AnalysisPlan

    @classmethod
    def from_archive(cls, archive: bytes, source: str = "the package") -> PlanPackage:
        """The plan package in ``archive``, read without trusting it (the agents decide trust).

        Raises PlanPackageError naming ``source`` when it is not a package or has no plan.
        """
        try:
            manifest = inspect_package(archive, PackageLimits()).manifest
        except PackageRejected as exc:
            raise PlanPackageError(f"{source}: {exc}") from None
        if manifest.plan is None:
            raise PlanPackageError(f"{source}: {manifest.name} is a model package, not an analysis plan")
        return cls(archive, package_digest(archive), manifest, manifest.plan)

    @classmethod
    def from_file(cls, path: Path) -> PlanPackage:
        """The plan package at ``path`` (see :meth:`from_archive`); PlanPackageError if unreadable."""
        try:
            archive = path.read_bytes()
        except OSError as exc:
            raise PlanPackageError(f"{path}: cannot read the package: {exc.strerror}") from None
        return cls.from_archive(archive, str(path))

    def layout(self, kind: TaskKind) -> ReleaseLayout:
        """What a task of ``kind`` releases; PlanPackageError if the package does not offer ``kind``."""
        if kind not in self.manifest.task_kinds:
            offered = ", ".join(k.value for k in self.manifest.task_kinds)
            raise PlanPackageError(f"{self.manifest.name} does not offer {kind.value} (it offers {offered})")
        return layout(self.plan, kind)


@dataclass(frozen=True)
class SiteOutcome:
    """One site's task: its release, or why there is none (``status`` a gRPC code name or ``INVALID_RESULT``)."""

    site: str
    release: SiteRelease | None
    status: str = "ok"
    detail: str = ""
    epsilon_charged: float = 0.0
    budget_epsilon_spent: float = 0.0


def run_plan(
    federation: Federation,
    clients: Mapping[str, AgentClient],
    package: PlanPackage,
    kind: TaskKind,
    noise_multiplier: float,
    *,
    run_id: str,
    on_site: Callable[[SiteOutcome], None] | None = None,
) -> list[SiteOutcome]:
    """Runs one ``kind`` task of ``package`` at every site of ``federation``, all at once.

    Args:
        federation: the sites, their datasets and the purpose recorded in every audit log.
        clients: an open client per site name.
        package: the plan package; every site must hold it approved.
        kind: ``dp_describe`` or ``dp_survival``, offered by the package.
        noise_multiplier: sigma of the release (each number's noise: ReleaseLayout.noise_std).
        run_id: recorded in every agent's audit log.
        on_site: called as each site finishes.

    Returns:
        One outcome per site, in federation order; a failed site has no release.

    Raises:
        PlanPackageError: the package does not offer ``kind``.
        ValueError: ``kind`` is not a plan kind or ``noise_multiplier`` is not positive.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"the noise multiplier must be a positive number, got {noise_multiplier!r}")
    profile = plan_profile(kind, noise_multiplier)
    release_layout = package.layout(kind)
    hyperparameters = profile.to_wire()

    def one(site: Site) -> SiteOutcome:
        spec = pb.TaskSpec(
            kind=profile.wire,  # type: ignore[arg-type]
            package_digest=package.digest,
            dataset_id=site.dataset,
            hyperparameters=hyperparameters,
            run_id=run_id,
            round=0,
            correlation_id=f"{run_id}/{site.name}/{kind.value}",
            purpose=federation.training.purpose,
        )
        outcome = _run_site(
            clients[site.name], site.name, package, spec, release_layout, noise_multiplier, federation.connect_seconds
        )
        if on_site is not None:
            on_site(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, len(federation.sites))) as pool:
        return list(pool.map(one, federation.sites))


def plan_profile(kind: TaskKind, noise_multiplier: float) -> TaskProfile:
    """The task a site runs for ``kind`` of a plan at ``noise_multiplier`` (q = 1); ValueError
    for a kind that runs no plan."""
    profile = registry.by_name(kind.value)
    if profile is None or profile.graph is not None:
        raise ValueError(f"{kind.value} is not a statistics task kind ({', '.join(registry.plan_kinds())})")
    return profile.from_values({"noise_multiplier": noise_multiplier, "sampling_rate": 1.0})


def _run_site(  # noqa: PLR0917 (one task's inputs)
    client: AgentClient,
    site: str,
    package: PlanPackage,
    spec: pb.TaskSpec,
    release_layout: ReleaseLayout,
    noise_multiplier: float,
    connect_seconds: float,
) -> SiteOutcome:
    try:
        client.wait_until_ready(connect_seconds)
        uploaded = client.upload_package(package.archive, timeout=UPLOAD_SECONDS)
        if uploaded.digest != package.digest:
            detail = f"the agent stored digest {uploaded.digest}, expected {package.digest}"
            return SiteOutcome(site, None, "INVALID_RESULT", detail)
        run = client.run_task(spec, [], stall_seconds=TASK_STALL_SECONDS)
    except AgentRpcError as exc:
        return SiteOutcome(site, None, exc.code.name, exc.details)
    problem = release_problem(run.scalars, release_layout)
    if problem:
        return SiteOutcome(site, None, "INVALID_RESULT", problem, run.epsilon_charged, run.budget_epsilon_spent)
    release = SiteRelease(site, dict(run.scalars), noise_multiplier)
    return SiteOutcome(site, release, "ok", "", run.epsilon_charged, run.budget_epsilon_spent)


def release_problem(scalars: Mapping[str, float], release_layout: ReleaseLayout) -> str:
    """Why a site's scalars are not the plan's release (a broken or hostile agent), or ""."""
    expected = set(release_layout.scalar_names())
    got = set(scalars)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        return f"the release differs from the plan's: missing {missing[:3]}, unexpected {extra[:3]}"
    if any(math.isinf(value) for value in scalars.values()):
        return "a released number is infinite"
    return ""
