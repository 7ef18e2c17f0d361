"""The policy of a development instance (no config file): permissive but complete.

It lets the development coordinator use every catalogued dataset for every
task kind with a modest budget, so `edge-agent serve` on its own is usable.
Production agents always load a policy file.
"""

from __future__ import annotations

from agent.governance.model import (
    ANY_DATASET,
    CoordinatorRule,
    DatasetRule,
    PackageRules,
    Policy,
)
from agent.identity.development_pki import DEV_COORDINATOR_URI
from agent.tasks.kinds import registry


def development_policy() -> Policy:
    return Policy(
        coordinators={
            DEV_COORDINATOR_URI: CoordinatorRule(
                identity=DEV_COORDINATOR_URI,
                datasets=frozenset({ANY_DATASET}),
                task_kinds=frozenset(registry.names()),
            )
        },
        datasets={
            ANY_DATASET: DatasetRule(
                dataset_id=ANY_DATASET,
                exposed_columns=None,
                forbidden_columns=frozenset(),
                label_columns=None,
                min_cohort_size=10,
                epsilon_budget=10.0,
                delta=1e-5,
                budget_group=ANY_DATASET,
                purposes=frozenset(),
                agreement_expires=None,
            )
        },
        packages=PackageRules(require_approval=False),
        digest="development",
        source="development defaults",
    )
