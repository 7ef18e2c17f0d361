"""Running a plan's regression model across the federation: DP Newton-Raphson, one ``dp_glm`` task per site per round.

The plan package is uploaded to every site once; then each of ``rounds`` rounds sends every
site still in the run a ``dp_glm`` task carrying the current coefficients (the one tensor
``coefficients``), checks each release against the plan's layout, adds the sites' noisy
score and information and takes one Newton step (:mod:`edge_sponsor.statistics.glm`).
Every task is charged at its site, including the ones whose release is withheld.

A site that refuses, fails or withholds its release (its noisy cohort below the minimum)
takes no further part: its sums would be missing from every later round anyway, and each
further task would spend its ε for nothing. The estimate is that of the sites in the last
round, which the result names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

import numpy as np

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import COEFFICIENTS, TaskKind
from agent.packages.plan import MAX_MAGNITUDE
from agent.packages.release_layout import GLM_COUNT, GLM_INFORMATION, GLM_SCORE, ReleaseLayout
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError
from edge_sponsor.coordinator.federation import Federation, Site
from edge_sponsor.coordinator.plan_tasks import (
    TASK_STALL_SECONDS,
    UPLOAD_SECONDS,
    PlanPackage,
    PlanPackageError,
    plan_profile,
    release_problem,
)
from edge_sponsor.statistics import glm
from edge_sponsor.statistics.releases import FloatArray, SiteRelease, read_block

# The spec's default: Newton from β = 0 reaches a logistic MLE to float precision in about
# 5 steps on a well-posed design (tests/sponsor_statistics: rossi in 6); each round costs ε.
DEFAULT_ROUNDS = 6
"""Newton-Raphson's rounds when none are asked for."""
BOUND_ROUNDS = 16
"""Lower-bound steps' rounds when none are asked for: slower to converge than Newton's, and
the mean of the last half (bench/glm_accuracy.py: fair, 6366 patients on 3 sites, ε = 3)."""
MAX_ROUNDS = 50
# The agent refuses coefficients beyond ±1e9 (agent.packages.plan.MAX_MAGNITUDE).
MAX_COEFFICIENT = MAX_MAGNITUDE


def glm_design(package: PlanPackage) -> glm.Design:
    """The design of ``package``'s model; PlanPackageError when the plan has none."""
    model = package.plan.model
    if model is None:
        raise PlanPackageError(f"{package.manifest.name} declares no model (plan.model): it offers no dp_glm")
    try:
        return glm.Design.of_model(model)
    except ValueError as exc:
        raise PlanPackageError(f"{package.manifest.name}: plan.model: {exc}") from None


def site_sums(release: SiteRelease, release_layout: ReleaseLayout, p: int) -> glm.SiteSums | None:
    """One site's sums read from its release; None when the site withheld them (NaN: cohort below the minimum).

    ``excluded`` is NaN where the site withheld that count alone (below its minimum cell size)."""
    count = read_block(release, release_layout, GLM_COUNT)
    score = read_block(release, release_layout, GLM_SCORE)
    information = read_block(release, release_layout, GLM_INFORMATION)
    # The excluded count is a count like any other: below the minimum cell size it is withheld
    # on its own (NaN, kept as such), and the sums are no less usable for it.
    if not (math.isfinite(count.values[0, 0]) and score.released(0) and information.released(0)):
        return None
    return glm.SiteSums(
        site=release.site,
        included=float(count.values[0, 0]),
        excluded=float(count.values[0, 1]),
        score=score.values[0].copy(),
        information=glm.symmetric_from_triangle(information.values[0], p),
        score_noise_variance=score.noise_variance,
        information_noise_variance=information.noise_variance,
    )


def run_glm(
    federation: Federation,
    clients: Mapping[str, AgentClient],
    package: PlanPackage,
    noise_multiplier: float,
    *,
    rounds: int = DEFAULT_ROUNDS,
    run_id: str,
    confidence: float = 0.95,
    average_last: int = 1,
    method: glm.GlmMethod = glm.GlmMethod.NEWTON,
    on_round: Callable[[glm.GlmRound, Sequence[glm.GlmSite]], None] | None = None,
) -> glm.GlmAnalysis:
    """Fits the plan's logistic model over the federation by ``rounds`` DP steps: Newton-Raphson,
    or lower-bound steps on the first round's information (``method``; :mod:`edge_sponsor.statistics.glm`).

    Args:
        federation: the sites, their datasets and the purpose recorded in every audit log.
        clients: an open client per site name.
        package: the plan package (with a model); every site must hold it approved.
        noise_multiplier: σ of every task (each costs the ε of one Gaussian mechanism at σ, q = 1).
        rounds: Newton steps, 1 to MAX_ROUNDS; every round is one charged task per site.
        run_id: recorded in every agent's audit log; each round is its ``round``.
        confidence: the level of the intervals.
        average_last: Newton: the coefficients are the mean of the last rounds' one-step estimates
            (:func:`edge_sponsor.statistics.glm.fit_averaged`), 1 the last step; bound: the mean
            of the last iterates (:func:`edge_sponsor.statistics.glm.fit_iterates`).
        method: newton, or bound (the first round is at β = 0, its information the bound).
        on_round: called after each round's step.

    Returns:
        The fit on the last round's sums, the rounds and each site's charges; a run in which
        every site left before a round is complete stops there (``stopped_early``).

    Raises:
        PlanPackageError: the package offers no dp_glm.
        ValueError: σ not positive or rounds out of range.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"the noise multiplier must be a positive number, got {noise_multiplier!r}")
    if not 1 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"rounds must be between 1 and {MAX_ROUNDS}, got {rounds}")
    if not 1 <= average_last <= rounds:
        raise ValueError(f"average_last must be between 1 and the rounds ({rounds}), got {average_last}")
    sites = _Sites(federation, clients, package, noise_multiplier, run_id)
    design = sites.design
    with ThreadPoolExecutor(max_workers=max(1, len(federation.sites))) as pool:
        list(pool.map(sites.upload, federation.sites))
        beta = np.zeros(design.p, dtype=np.float64)
        history: list[glm.GlmRound] = []
        steps: list[glm.NewtonStep] = []
        bound: glm.Projected | None = None
        stopped = ""
        for index in range(rounds):
            if not np.all(np.abs(beta) <= MAX_COEFFICIENT):
                # The agents refuse such coefficients (and would charge nothing); a step this far
                # out means the noise has swamped the information.
                stopped = f"round {index}: the coefficients left ±{MAX_COEFFICIENT:g}"
                break
            active = [site for site in federation.sites if sites.state[site.name].status == glm.OK]
            sums = [s for s in pool.map(partial(sites.task, index=index, beta=beta), active) if s is not None]
            if not sums:
                stopped = f"no site returned its sums in round {index}"
                break
            try:
                pooled = glm.pool_sums(sums)
                if method is glm.GlmMethod.BOUND:
                    # The first round's sums (at β = 0) give the bound every step uses.
                    bound = bound if bound is not None else glm.curvature_bound(pooled)
                    step = glm.bound_step(beta, pooled, bound)
                else:
                    step = glm.newton_step(beta, pooled)
            except ValueError as exc:
                stopped = f"round {index}: {exc}"
                break
            steps.append(step)
            beta = step.coefficients
            history.append(
                glm.GlmRound(
                    index, step.sums.sites, step.sums.included, tuple(float(b) for b in beta), step.information.floored
                )
            )
            if on_round is not None:
                on_round(history[-1], [sites.state[site.name] for site in federation.sites])
    fit: glm.GlmFit | None = None
    if steps and method is glm.GlmMethod.BOUND:
        fit = glm.fit_iterates(design, steps, min(average_last, len(steps)), confidence)
    elif steps:
        fit = glm.fit_averaged(design, steps, min(average_last, len(steps)), confidence)
    return glm.GlmAnalysis(
        fit=fit,
        rounds=tuple(history),
        sites=tuple(sites.state[site.name] for site in federation.sites),
        noise_multiplier=noise_multiplier,
        rounds_planned=rounds,
        stopped_early=stopped,
        # Lower-bound fits measure the error left since the sites last changed themselves (GlmFit.transient).
        not_converged=unsettled(history) if method is glm.GlmMethod.NEWTON else "",
    )


def unsettled(history: Sequence[glm.GlmRound]) -> str:
    """Why the estimate may be far from the pooled sites' optimum, or "": when the sites
    pooled changed in the last round, the estimate is one Newton step from the optimum of
    other sites (a step that starts far away lands far away under noise); two steps with
    the same sites bring it back."""
    if len(history) < 2 or history[-1].sites == history[-2].sites:
        return ""
    left = sorted(set(history[-2].sites) - set(history[-1].sites))
    return (
        f"the sites pooled changed in the last round ({', '.join(left) or 'a site'} left): the estimate is one "
        "step from the previous sites' optimum; run it again with the sites that remain"
    )


class _Sites:
    """The run's calls to the sites and what each has been charged so far."""

    def __init__(
        self,
        federation: Federation,
        clients: Mapping[str, AgentClient],
        package: PlanPackage,
        noise_multiplier: float,
        run_id: str,
    ) -> None:
        self.federation, self.clients, self.package = federation, clients, package
        self.noise_multiplier, self.run_id = noise_multiplier, run_id
        self.design = glm_design(package)
        self.layout = package.layout(TaskKind.DP_GLM)
        self.profile = plan_profile(TaskKind.DP_GLM, noise_multiplier)
        # Written by one pool thread per site (each its own key), read between rounds.
        self.state = {site.name: glm.GlmSite(site.name) for site in federation.sites}

    def upload(self, site: Site) -> None:
        client = self.clients[site.name]
        try:
            client.wait_until_ready(self.federation.connect_seconds)
            uploaded = client.upload_package(self.package.archive, timeout=UPLOAD_SECONDS)
        except AgentRpcError as exc:
            self.state[site.name] = replace(self.state[site.name], status=exc.code.name, detail=exc.details)
            return
        if uploaded.digest != self.package.digest:
            detail = f"the agent stored digest {uploaded.digest}, expected {self.package.digest}"
            self.state[site.name] = replace(self.state[site.name], status="INVALID_RESULT", detail=detail)

    def _spent(self, site: Site) -> float | None:
        """The site's budget group ε now (GetBudget); None if it cannot say."""
        try:
            return self.clients[site.name].get_budget(site.dataset).epsilon_spent
        except AgentRpcError:
            return None

    def task(self, site: Site, *, index: int, beta: FloatArray) -> glm.SiteSums | None:
        """Round ``index``'s task at ``site`` with coefficients ``beta``: its sums, or None (and why, in state)."""
        spec = pb.TaskSpec(
            kind=self.profile.wire,  # type: ignore[arg-type]
            package_digest=self.package.digest,
            dataset_id=site.dataset,
            hyperparameters=self.profile.to_wire(),
            run_id=self.run_id,
            round=index,
            correlation_id=f"{self.run_id}/{site.name}/dp_glm/{index}",
            purpose=self.federation.training.purpose,
        )
        before = self.state[site.name]
        try:
            run = self.clients[site.name].run_task(
                spec, [(COEFFICIENTS, beta.astype(np.float64))], stall_seconds=TASK_STALL_SECONDS
            )
        except AgentRpcError as exc:
            # A task that fails after it read rows is charged by the agent: its budget says so.
            spent = self._spent(site)
            self.state[site.name] = replace(
                before,
                status=exc.code.name,
                detail=exc.details,
                budget_epsilon_spent=before.budget_epsilon_spent if spent is None else spent,
            )
            return None
        charged = replace(
            before,
            rounds_charged=before.rounds_charged + 1,
            epsilon_charged=before.epsilon_charged + run.epsilon_charged,
            budget_epsilon_spent=run.budget_epsilon_spent,
        )
        problem = release_problem(run.scalars, self.layout)
        if problem:
            self.state[site.name] = replace(charged, status="INVALID_RESULT", detail=problem)
            return None
        release = SiteRelease(site.name, dict(run.scalars), self.noise_multiplier)
        sums = site_sums(release, self.layout, self.design.p)
        if sums is None:
            detail = f"round {index}: the release was withheld (the site's noisy cohort is below its minimum)"
            self.state[site.name] = replace(charged, status=glm.WITHHELD, detail=detail)
            return None
        self.state[site.name] = charged
        return sums
