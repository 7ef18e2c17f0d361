"""A hyperparameter as every layer names, checks and bounds it, and the ones several kinds share.

A kind takes a hyperparameter by annotating a field of its profile with the
declaration (``clip_norm: Annotated[float, CLIP_NORM]``). From that one annotation
come: the wire field that is required for the kind, the range any request must
satisfy, the policy's ``[datasets.bounds.<name>]`` table and its default, the
package's declared range (``manifest.hyperparameters.<name>``), the audit field
and the ``policy explain`` option.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from agent.governance.model import Bounds
from agent.tasks.errors import TaskSpecError


@dataclass(frozen=True)
class Requirement:
    """What a value must satisfy whatever the policy says, and the words that say so."""

    holds: Callable[[float], bool]
    words: str


POSITIVE = Requirement(lambda value: math.isfinite(value) and value > 0, "a positive number")
RATE = Requirement(lambda value: 0 < value <= 1, "in (0, 1]")


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter; ``name`` is its field on the wire (DPHyperparameters), in policies and in manifests."""

    name: str
    requirement: Requirement
    # The bound a policy applies when it names none (the hospital narrows or widens it).
    policy_default: Bounds
    # The range a policy file may give as min or max.
    policy_range: tuple[float, float]
    # A typical value: the default of ``edge-agent policy explain``.
    example: float
    integer: bool = False

    def checked(self, value: float) -> float:
        """``value`` itself; TaskSpecError if no policy could make it sensible."""
        if not self.requirement.holds(value):
            raise TaskSpecError(f"hyperparameters.{self.name} must be {self.requirement.words}, got {value!r}")
        return value

    @property
    def option(self) -> str:
        """The command-line option that sets it."""
        return "--" + self.name.replace("_", "-")


CLIP_NORM = Hyperparameter("clip_norm", POSITIVE, Bounds(0.0, None), (0.0, 1e6), example=1.0)
"""The L2 bound C on one example's contribution."""

# sigma = 0 would release exact sums: no differential privacy at all. Below ~0.5 a single
# task burns budget fast, hence the default bound; the hospital decides. Below 0.1 no policy
# can make sense of it: one release at q = 1 costs ε > 90, and the ledger's accountant
# needs memory and time growing as 1/sigma (2.3 GB and 18 s at 0.01) to say even that.
MIN_NOISE_MULTIPLIER = 0.1
ACCOUNTABLE = Requirement(
    lambda value: math.isfinite(value) and value >= MIN_NOISE_MULTIPLIER, f"a number >= {MIN_NOISE_MULTIPLIER:g}"
)
NOISE_MULTIPLIER = Hyperparameter("noise_multiplier", ACCOUNTABLE, Bounds(0.5, None), (0.0, 1e6), example=1.0)
"""sigma: the noise's standard deviation relative to the release's L2 sensitivity."""

SAMPLING_RATE = Hyperparameter("sampling_rate", RATE, Bounds(0.0, 1.0), (0.0, 1.0), example=0.01)
"""q: the probability that each row is in a step's Poisson sample."""
