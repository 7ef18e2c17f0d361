"""What a statistics task releases: its blocks, their sensitivities and their noise.

One home for the release layout, read by the agent (what to compute, what the worker may
return) and by the sponsor's estimators (what each released number is and how noisy).

A release is a list of **blocks**. Each block is a table of ``strata`` by ``cells`` numbers
to which one patient contributes in **one stratum** and with L2 norm at most the block's
``sensitivity`` (a patient is counted in one cell of a count table, adds one clamped
value to a sum, leaves the risk set in one interval). A task releasing ``k`` blocks adds
Gaussian noise of standard deviation ``sigma * sqrt(k) * sensitivity`` to every number
of each block: the whole release, each block divided by ``sqrt(k) * sensitivity``, has
L2 sensitivity 1, so it is one Gaussian mechanism with noise multiplier ``sigma``,
accounted as such in the ledger (q = 1: statistics describe the whole cohort).

Scalar names are ``<block>[<stratum>][<cell>]`` with stratum and cell as indexes; the
labels of both come from :attr:`Block.cells` and
:meth:`agent.packages.plan.AnalysisPlan.stratum_labels`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from agent.packages.manifest import PLAN_KINDS, TaskKind
from agent.packages.plan import AnalysisPlan, CategoricalVariable, NumericVariable, SurvivalSpec


class Suppression(StrEnum):
    """How the policy's minimum cell size applies to a block's noisy numbers."""

    # Each cell below the minimum is withheld (contingency-table counts).
    CELL = "cell"
    # Withheld with its stratum only (sums, histograms, survival exits: their cells are
    # small by design, and the noise protects them).
    STRATUM = "stratum"


@dataclass(frozen=True)
class Block:
    name: str
    """``count``, ``<column>.n``, ``<column>.sum``, ``<column>.sumsq``, ``<column>.histogram``,
    ``<column>.counts`` or ``survival.exits``."""
    cells: tuple[str, ...]
    """The labels of one stratum's cells."""
    sensitivity: float
    """The most one patient moves the block, in L2 norm (all strata together)."""
    suppression: Suppression

    def scalar_name(self, stratum: int, cell: int) -> str:
        return f"{self.name}[{stratum}][{cell}]"


@dataclass(frozen=True)
class ReleaseLayout:
    """Every block a task of ``kind`` releases on ``plan``, in release order."""

    kind: TaskKind
    blocks: tuple[Block, ...]
    strata: int

    def noise_std(self, block: Block, noise_multiplier: float) -> float:
        """The standard deviation of the Gaussian noise on each number of ``block``."""
        return noise_multiplier * math.sqrt(len(self.blocks)) * block.sensitivity

    def scalar_names(self) -> Iterator[str]:
        for block in self.blocks:
            for stratum in range(self.strata):
                for cell in range(len(block.cells)):
                    yield block.scalar_name(stratum, cell)

    def block(self, name: str) -> Block:
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(name)


COUNT = "count"
SURVIVAL_EXITS = "survival.exits"
MISSING = "missing"
OTHER = "other"
EVENT = "event"
CENSORED = "censored"


def layout(plan: AnalysisPlan, kind: TaskKind) -> ReleaseLayout:
    """The release of a ``kind`` task on ``plan``; ValueError for a kind that runs no plan, or
    dp_survival on a plan without a survival outcome."""
    if kind not in PLAN_KINDS:
        raise ValueError(f"{kind.value} runs no analysis plan")
    if kind is TaskKind.DP_SURVIVAL:
        if plan.survival is None:
            raise ValueError("the plan declares no survival outcome")
        return ReleaseLayout(kind, (survival_block(plan.survival),), plan.stratum_count)
    blocks = [Block(COUNT, ("patients",), 1.0, Suppression.CELL)]
    for variable in plan.variables:
        if isinstance(variable, CategoricalVariable):
            cells = (*(_label(c) for c in variable.categories), OTHER, MISSING)
            blocks.append(Block(f"{variable.column}.counts", cells, 1.0, Suppression.CELL))
            continue
        blocks += numeric_blocks(variable)
    return ReleaseLayout(kind, tuple(blocks), plan.stratum_count)


def numeric_blocks(variable: NumericVariable) -> list[Block]:
    """Counts of present and missing values, the sum and the sum of squares of the clamped values
    minus the bounds' centre (each at most the half-width ``h`` from it: sensitivities ``h`` and
    ``h²``), and the histogram when bins are declared."""
    h = variable.half_width
    blocks = [
        Block(f"{variable.column}.n", ("present", MISSING), 1.0, Suppression.CELL),
        Block(f"{variable.column}.sum", ("sum",), h, Suppression.STRATUM),
        Block(f"{variable.column}.sumsq", ("sumsq",), h * h, Suppression.STRATUM),
    ]
    if variable.bins:
        edges = variable.bins
        cells = tuple(
            f"[{edges[k]:g}, {edges[k + 1]:g}{']' if k == len(edges) - 2 else ')'}" for k in range(len(edges) - 1)
        )
        blocks.append(Block(f"{variable.column}.histogram", cells, 1.0, Suppression.STRATUM))
    return blocks


def survival_block(survival: SurvivalSpec) -> Block:
    """Exits per interval of the grid: ``event`` and ``censored`` for ``[0, t_1]``, ``(t_{j-1}, t_j]``
    and after ``t_J``, then ``missing`` (no usable time or event). Each patient is in one cell."""
    grid = survival.grid
    intervals = [f"[0, {grid[0]:g}]"]
    intervals += [f"({grid[j - 1]:g}, {grid[j]:g}]" for j in range(1, len(grid))]
    intervals.append(f"({grid[-1]:g}, inf)")
    cells = tuple(f"{interval} {outcome}" for interval in intervals for outcome in (EVENT, CENSORED))
    return Block(SURVIVAL_EXITS, (*cells, MISSING), 1.0, Suppression.STRATUM)


def _label(value: str | int | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
