"""Privacy planning: the tasks a run would add, as the ledger would charge them.

A coordinator sends, with GetBudget, the tasks it plans (kind, hyperparameters, how
many); each is parsed exactly as a RunTask spec is (the kind's profile, its checks, its
accounting grid) and multiplied out. The ledger composes them with what the budget group
holds (PrivacyLedger.projected): the ε the agent would reach, by its own accounting.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.privacy.mechanism import Mechanism
from agent.tasks.errors import TaskSpecError
from agent.tasks.kinds import registry

# Enough for any run (a million tasks of a kind), small enough that no request can make
# a step count overflow or the composition's exponent absurd.
MAX_PLANNED_COUNT = 1_000_000
MAX_PLANNED_ENTRIES = 64


def planned_mechanisms(planned: Sequence[pb.PlannedTasks]) -> list[Mechanism]:
    """The mechanisms of ``planned`` (one per entry, its steps times its count).

    Raises TaskSpecError naming the entry and field at fault (``planned[1].count``,
    ``planned[0].hyperparameters.clip_norm``).
    """
    if len(planned) > MAX_PLANNED_ENTRIES:
        raise TaskSpecError(f"planned: at most {MAX_PLANNED_ENTRIES} entries")
    mechanisms = []
    for index, entry in enumerate(planned):
        where = f"planned[{index}]"
        profile = registry.by_wire(entry.kind)
        if profile is None:
            raise TaskSpecError(f"{where}.kind: must be one of {', '.join(registry.names())}")
        if not 1 <= entry.count <= MAX_PLANNED_COUNT:
            raise TaskSpecError(f"{where}.count must be between 1 and {MAX_PLANNED_COUNT}, got {entry.count}")
        try:
            task = profile.from_wire(entry.hyperparameters)
        except TaskSpecError as exc:
            raise TaskSpecError(f"{where}: {str(exc).removeprefix('spec.')}") from None
        one = task.mechanism()
        mechanisms.append(Mechanism(one.sampling_rate, one.noise_multiplier, one.steps * entry.count))
    return mechanisms
