"""Running an analysis plan across the federation: one statistics task per site.

Each site gets the plan package (uploaded; the hospital's reviewer must have approved
it), then one ``dp_describe`` or ``dp_survival`` task on the federation file's dataset
with the chosen noise multiplier. What comes back is checked against the plan's release
layout (exactly the declared numbers, each finite or withheld) before an estimator sees
it. A site that refuses or fails is reported with the agent's words; the others count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from agent.packages.errors import PackageRejected
from agent.packages.inspection import inspect_package
from agent.packages.limits import PackageLimits
from agent.packages.manifest import Manifest, TaskKind
from agent.packages.plan import AnalysisPlan
from agent.packages.release_layout import ReleaseLayout, layout
from agent.packages.verification import package_digest
from agent.tasks.kinds import registry
from agent.tasks.kinds.profile import TaskProfile
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.federation import Federation
from edge_sponsor.coordinator.optimizer import Parameters
from edge_sponsor.coordinator.progress import QuietObserver
from edge_sponsor.coordinator.strategies import SiteResult, Strategy
from edge_sponsor.coordinator.study_package import StudyPackage
from edge_sponsor.coordinator.training import FederatedTraining, FederationError, TrainingResult
from edge_sponsor.statistics.releases import SiteRelease

# The task reads the whole dataset once; the agent reports progress every 10 s while it works.
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

    def study_package(self) -> StudyPackage:
        """The package as the round loop runs it (no model.onnx to export into)."""
        return StudyPackage(self.archive, self.digest, self.manifest, None)

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
    parameters: Parameters | None = None,
) -> list[SiteOutcome]:
    """Runs one ``kind`` task of ``package`` at every site of ``federation``, all at once: one
    round of :class:`PlanReleases` in the coordinator's round loop, as any strategy.

    Args:
        federation: the sites, their datasets and the purpose recorded in every audit log.
        clients: an open client per site name.
        package: the plan package; every site must hold it approved.
        kind: ``dp_describe`` or ``dp_survival``, offered by the package.
        noise_multiplier: sigma of the release (each number's noise: ReleaseLayout.noise_std).
        run_id: recorded in every agent's audit log.
        parameters: the tensors the kind takes on this package (a weighted plan's: the
            propensity coefficients, ``propensity``); None for none.

    Returns:
        One outcome per site, in federation order; a failed site has no release.

    Raises:
        PlanPackageError: the package does not offer ``kind``.
        ValueError: ``kind`` is not a plan kind or ``noise_multiplier`` is not positive.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"the noise multiplier must be a positive number, got {noise_multiplier!r}")
    releases = PlanReleases(package, kind, noise_multiplier)
    result, left_out = run_rounds(federation, clients, package, releases, rounds=1, run_id=run_id, initial=parameters)
    outcomes = []
    for site in federation.sites:
        if site.name in left_out:
            status, detail = left_out[site.name]
            outcomes.append(SiteOutcome(site.name, None, status, detail))
            continue
        task = result.last_task(site.name) if result is not None else None
        release = releases.releases.get(site.name)
        ledger = result.charged[site.name] if result is not None else None
        charged = (ledger.epsilon, ledger.budget_epsilon) if ledger is not None else (0.0, 0.0)
        if task is None:
            outcomes.append(SiteOutcome(site.name, None, "UNKNOWN", "the site was not asked"))
        else:
            outcomes.append(SiteOutcome(site.name, release, task.status, task.detail, *charged))
    return outcomes


def run_rounds(
    federation: Federation,
    clients: Mapping[str, AgentClient],
    package: PlanPackage,
    strategy: Strategy,
    *,
    rounds: int,
    run_id: str,
    initial: Parameters | None = None,
) -> tuple[TrainingResult | None, dict[str, tuple[str, str]]]:
    """``rounds`` rounds of ``strategy`` on ``package`` in the coordinator's round loop, every
    round going on with whichever sites the strategy asks (quorum 1), no federated evaluation.

    Returns the loop's result (None when no site could take part) and each site it left out
    before the first round: its status and why.
    """
    # A statistics task reads the whole cohort once, reporting progress as it goes: it is held
    # to the stall limit, not to the federation file's deadline for training tasks.
    plan = replace(
        federation.training,
        rounds=rounds,
        quorum=1,
        evaluate_every=0,
        max_failed_rounds=1,
        task_stall_seconds=TASK_STALL_SECONDS,
        task_deadline_seconds=None,
    )
    training = FederatedTraining(
        replace(federation, training=plan),
        clients,
        package.study_package(),
        QuietObserver(),
        run_id=run_id,
        strategy=strategy,
    )
    try:
        try:
            ready, _ = training.prepare()
        except FederationError:
            return None, training.left_out
        return training.train(ready, initial or {}), training.left_out
    finally:
        training.close()


class PlanReleases:
    """A plan's one-task analysis (``dp_describe``, ``dp_survival``) as a strategy: every site
    gets the task once; each release that is the plan's is kept, by site."""

    def __init__(self, package: PlanPackage, kind: TaskKind, noise_multiplier: float) -> None:
        self.profile = plan_profile(kind, noise_multiplier)
        self.layout = package.layout(kind)
        self.noise_multiplier = noise_multiplier
        self.releases: dict[str, SiteRelease] = {}

    def configure(self, round_number: int, site: str) -> TaskProfile | None:
        return self.profile

    def release_problem(self, result: SiteResult) -> str:
        return release_problem(result.run.scalars, self.layout)

    def aggregate(self, parameters: Parameters, results: Mapping[str, SiteResult]) -> Parameters | None:
        for name, result in results.items():
            self.releases[name] = SiteRelease(name, dict(result.run.scalars), self.noise_multiplier)
        return parameters


def plan_profile(kind: TaskKind, noise_multiplier: float) -> TaskProfile:
    """The task a site runs for ``kind`` of a plan at ``noise_multiplier`` (q = 1); ValueError
    for a kind that runs no plan."""
    profile = registry.by_name(kind.value)
    if profile is None or profile.graph is not None:
        raise ValueError(f"{kind.value} is not a statistics task kind ({', '.join(registry.plan_kinds())})")
    return profile.from_values({"noise_multiplier": noise_multiplier, "sampling_rate": 1.0})


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
