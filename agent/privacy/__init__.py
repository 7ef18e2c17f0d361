"""Differential privacy: mechanism descriptions, accounting and the budget ledger.

Only the light modules are imported here. ``agent.privacy.accounting`` and
``agent.privacy.ledger`` import dp-accounting (about a second, with SciPy):
import them explicitly where ε is needed. docs/privacy.md explains the
accounting for compliance officers.
"""

from agent.privacy.errors import (
    BudgetExceededError,
    DuplicateTaskError,
    LedgerError,
    MechanismError,
    PrivacyError,
    TaskStateError,
    UnknownTaskError,
)
from agent.privacy.mechanism import Mechanism, combined_noise_multiplier, step_counts

__all__ = [
    "BudgetExceededError",
    "DuplicateTaskError",
    "LedgerError",
    "Mechanism",
    "MechanismError",
    "PrivacyError",
    "TaskStateError",
    "UnknownTaskError",
    "combined_noise_multiplier",
    "step_counts",
]
