"""``dp_evaluate``: noisy sums of the package's clipped per-example metrics, on its eval graph.

Each metric is clipped into its declared range, so the kind takes no clipping norm.
With ``release_dropped_units`` (only at ``sampling_rate`` 1) it also releases DROPPED_UNITS:
the units that lost a row to a missing value in a column the package reads, counted where
the task reads its rows (:func:`agent.runtime.rows.dropped_units`), plus noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import DROPPED_UNITS, NOISY_COUNT, Manifest
from agent.privacy.mechanism import Mechanism
from agent.runtime.isolation import GraphRole
from agent.runtime.tasks import EvaluationSettings, dp_evaluate
from agent.tasks.kinds.profile import (
    Computation,
    PlanComputation,
    Release,
    TaskProfile,
    graph_computation,
)
from agent.tasks.worker import Released


@dataclass(frozen=True, kw_only=True)
class DpEvaluate(TaskProfile, name="dp_evaluate", wire=pb.TASK_KIND_DP_EVALUATE, graph=GraphRole.EVALUATION):
    # No hyperparameters of its own: noise_multiplier, sampling_rate, release_noisy_count and
    # release_dropped_units, as every kind; this one can release the dropped units' count.
    releases_dropped_units = True

    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        return Mechanism.dp_evaluate(noise_multiplier, sampling_rate, count)

    def release(self, manifest: Manifest) -> Release:
        metrics = {metric.name for metric in manifest.metrics}
        count = {NOISY_COUNT} if self.release_noisy_count else set()
        if self.release_dropped_units:
            count.add(DROPPED_UNITS)
        # The audit log names a group once (a histogram's cells are many), other metrics one by one.
        groups = manifest.metric_groups
        audited = None
        if groups:
            ungrouped = {metric.name for metric in manifest.metrics if metric.group is None}
            audited = tuple(sorted([*ungrouped, *count, *(f"{g.name}[{len(g.members)}]" for g in groups)]))
        return Release((), frozenset(metrics | count), audited)

    def compute(self, computation: Computation | PlanComputation) -> Released:
        settings = EvaluationSettings(
            self.noise_multiplier, self.sampling_rate, self.count_noise_multiplier, self.dropped_noise_multiplier
        )
        evaluated = graph_computation(computation).run(dp_evaluate, settings)
        scalars = dict(evaluated.sums)
        if evaluated.noisy_count is not None:
            scalars[NOISY_COUNT] = evaluated.noisy_count
        if evaluated.dropped_units is not None:
            scalars[DROPPED_UNITS] = evaluated.dropped_units
        return Released({}, scalars)
