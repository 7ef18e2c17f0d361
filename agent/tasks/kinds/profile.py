"""What a task kind is: the ``TaskProfile`` every kind module defines.

A profile is a frozen dataclass. Its *class* says what the kind is: its name (in
manifests, policies, the CLI, audit entries and metrics), its number on the wire
(``edge_agent.v1.TaskKind``), the package graph it runs, the mechanism it is
accounted as, the shape of what it releases and how the worker computes it. An
*instance* holds one task's hyperparameters: parsed once from the wire by
:meth:`TaskProfile.from_wire`, then handed unchanged to governance (the policy's
bounds), the ledger (:meth:`TaskProfile.mechanism`), the audit log
(:meth:`TaskProfile.audit_fields`) and the worker (:meth:`TaskProfile.compute`).
A kind and its hyperparameters travel as one value, so they cannot disagree.

Every kind takes ``noise_multiplier`` and ``sampling_rate`` (fields of the base) and
adds its own. Each such field is annotated with its declaration
(``clip_norm: Annotated[float, CLIP_NORM]``, see :mod:`agent.tasks.kinds.hyperparameters`);
every list of them (required wire fields, policy bounds, package ranges, audit
fields, CLI options) is read from those annotations.

Adding a kind: write ``agent/tasks/kinds/<name>.py`` with one subclass (its name,
wire number and graph as class keywords, its own hyperparameter fields,
:meth:`TaskProfile.accounted_as`, :meth:`TaskProfile.release`,
:meth:`TaskProfile.compute`), add it to ``PROFILES`` in
:mod:`agent.tasks.kinds.registry`, and give its name and number to the contracts: a
value of ``TaskKind`` in ``protos/edge_agent/v1/agent.proto`` and a member of the
manifest's ``TaskKind`` (tests check both against the registry). A hyperparameter no
kind took before also needs its field in ``DPHyperparameters`` and, for packages to
bound it, in the manifest format.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import DROPPED_UNITS, Manifest, ParameterDecl
from agent.packages.plan import AnalysisPlan
from agent.privacy.mechanism import Mechanism, accounting_grid, combined_noise_multiplier
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import RowSource
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import Controls, Randomness
from agent.statistics.patients import PatientTable
from agent.tasks.errors import TaskSpecError
from agent.tasks.kinds.hyperparameters import MIN_NOISE_MULTIPLIER, NOISE_MULTIPLIER, SAMPLING_RATE, Hyperparameter
from agent.tasks.worker import Released

_Settings_contra = TypeVar("_Settings_contra", contravariant=True)
_Result_co = TypeVar("_Result_co", covariant=True)


class RuntimeComputation(Protocol[_Settings_contra, _Result_co]):
    """The shape of the computations in agent.runtime.tasks (``dp_gradient(wrapper, rows, parameters, settings)``)."""

    def __call__(
        self,
        wrapper: CompiledWrapper,
        rows: RowSource,
        parameters: Mapping[str, npt.ArrayLike],
        settings: _Settings_contra,
        /,
        *,
        controls: Controls | None = ...,
        randomness: Randomness | None = ...,
    ) -> _Result_co: ...


@dataclass(frozen=True)
class Release:
    """What a task of a kind may hand back: these tensors in these shapes, these scalars, nothing else."""

    tensors: tuple[ParameterDecl, ...]
    scalars: frozenset[str]
    # What the audit log names of the result (a plan's thousands of numbers, block by block);
    # None: every tensor and scalar by name.
    audited: tuple[str, ...] | None = None

    def audit_names(self) -> tuple[str, ...]:
        if self.audited is not None:
            return self.audited
        return tuple(sorted([*(tensor.name for tensor in self.tensors), *self.scalars]))


@dataclass(frozen=True, eq=False)
class Computation:
    """What the worker has prepared, without reading a row, when a profile computes."""

    wrapper: CompiledWrapper
    rows: RowSource
    parameters: Mapping[str, npt.NDArray[np.generic]]
    controls: Controls
    randomness: Randomness
    # A public row count to normalise by: the lower edge of the dataset's row-count
    # bucket, which the coordinator already sees (the exact count would change with
    # the row added or removed).
    normalising_rows: int

    def run(
        self, computation: RuntimeComputation[_Settings_contra, _Result_co], settings: _Settings_contra
    ) -> _Result_co:
        """``computation`` with ``settings`` on the prepared wrapper, rows and parameters."""
        return computation(
            self.wrapper, self.rows, self.parameters, settings, controls=self.controls, randomness=self.randomness
        )


@dataclass(frozen=True, eq=False)
class PlanComputation:
    """What the worker has prepared for a kind that computes a plan's statistics: the plan,
    its patients (read, filtered and one row each: agent.statistics.patients), the policy's
    minimum cell and cohort sizes, the noise's generator and the task's parameter tensors."""

    plan: AnalysisPlan
    # Built for agent.packages.release_layout.analysed(plan, kind).
    patients: PatientTable
    min_cell_size: int
    # Everything is withheld when the cohort's noisy size is below it (agent.statistics.tables).
    min_cohort_size: int
    noise: np.random.Generator
    # The tensors Manifest.task_parameters declares for the kind, checked (shape, finite) and
    # as float64; none for dp_describe and dp_survival.
    parameters: Mapping[str, npt.NDArray[np.float64]] = dataclasses.field(default_factory=dict)


def graph_computation(computation: Computation | PlanComputation) -> Computation:
    """``computation`` as a graph kind's input; TypeError if the worker prepared a plan's."""
    if not isinstance(computation, Computation):
        raise TypeError("a graph kind was handed a plan's computation")
    return computation


def plan_computation(computation: Computation | PlanComputation) -> PlanComputation:
    """``computation`` as a plan kind's input; TypeError if the worker prepared a graph's."""
    if not isinstance(computation, PlanComputation):
        raise TypeError("a plan kind was handed a graph's computation")
    return computation


@dataclass(frozen=True, kw_only=True)
class TaskProfile(ABC):
    """One task kind; subclasses are frozen, keyword-only dataclasses that add the kind's own hyperparameters.

    A subclass names its kind in the class statement:
    ``class DpGradient(TaskProfile, name="dp_gradient", wire=pb.TASK_KIND_DP_GRADIENT, graph=GraphRole.GRADIENT)``.
    """

    name: ClassVar[str]
    """The kind's name in manifests, policies, the CLI and audit entries (``dp_gradient``)."""
    wire: ClassVar[int]
    """Its value of ``edge_agent.v1.TaskKind``."""
    graph: ClassVar[GraphRole | None]
    """The package graph it runs; None for a kind the agent computes itself from the package's analysis plan."""

    # Every kind releases Poisson-subsampled sums with Gaussian noise (agent.privacy.mechanism),
    # and may release its sample's size with the same noise multiplier; a kind that reads the
    # whole cohort may also release how many units lost a row to a missing value (DROPPED_UNITS).
    noise_multiplier: Annotated[float, NOISE_MULTIPLIER]
    sampling_rate: Annotated[float, SAMPLING_RATE]
    release_noisy_count: bool = False
    release_dropped_units: bool = False

    releases_dropped_units: ClassVar[bool] = False
    """Whether the kind can release DROPPED_UNITS (it reads rows through the agent's data path,
    where they are dropped, and releases scalars); a kind that can sets it in its class body."""

    def __init_subclass__(cls, *, name: str, wire: int, graph: GraphRole | None, **kwargs: Any) -> None:
        # Keywords, not class attributes: a kind cannot be defined without them.
        super().__init_subclass__(**kwargs)
        cls.name = name
        cls.wire = wire
        cls.graph = graph

    def __post_init__(self) -> None:
        # Refused when the profile is built from the wire: before anything is reserved or charged.
        if not self.release_dropped_units:
            return
        if not self.releases_dropped_units:
            raise TaskSpecError(f"{self.name} does not release {DROPPED_UNITS}: release_dropped_units must be false")
        if self.sampling_rate != 1.0:
            # A unit all of whose rows were dropped is in no Poisson sample, so a count "of the
            # sample" cannot include it; the count is of the whole cohort, which only q = 1 reads.
            raise TaskSpecError(
                f"release_dropped_units counts the units of the whole cohort that lost a row to a missing value, "
                f"and a sampled task does not read the whole cohort: hyperparameters.sampling_rate must be 1 "
                f"(got {self.sampling_rate!r})"
            )

    @classmethod
    def declared(cls) -> tuple[Hyperparameter, ...]:
        """The hyperparameters the kind takes, in field order: each field annotated with one."""
        return _declared(cls)

    @classmethod
    def from_values(
        cls, values: Mapping[str, float], *, release_noisy_count: bool = False, release_dropped_units: bool = False
    ) -> Self:
        """The profile with these values, by hyperparameter name; only the kind's own consistency
        is checked (TaskSpecError), not each value's range (see :meth:`from_wire`)."""
        known = {hyperparameter.name for hyperparameter in cls.declared()}
        if set(values) != known:
            raise TaskSpecError(f"{cls.name} takes {', '.join(sorted(known))}; got {', '.join(sorted(values))}")
        arguments: dict[str, Any] = {
            **values,
            "release_noisy_count": release_noisy_count,
            "release_dropped_units": release_dropped_units,
        }
        return cls(**arguments)

    @classmethod
    def from_wire(cls, message: pb.DPHyperparameters) -> Self:
        """The hyperparameters a TaskSpec sent for this kind; TaskSpecError names a missing or senseless one.

        Fields the kind does not take are ignored, as the contract says.
        """
        declared = cls.declared()
        present = {field.name for field, _ in message.ListFields()}
        for hyperparameter in declared:
            if hyperparameter.name not in present:
                raise TaskSpecError(f"spec.hyperparameters.{hyperparameter.name} is required for {cls.name}")
        values = {h.name: h.checked(getattr(message, h.name)) for h in declared}
        profile = cls.from_values(
            values,
            release_noisy_count=message.release_noisy_count,
            release_dropped_units=message.release_dropped_units,
        )
        # The floor on σ holds for what the task releases as a whole: with its counts, or its
        # steps over the whole cohort, it composes to one Gaussian (as GetBudget's planning
        # holds a plan's unsampled tasks to the same floor, so that both refuse alike).
        one = profile.mechanism()
        composed = one.noise_multiplier / math.sqrt(one.steps)
        if one.sampling_rate == 1.0 and composed < MIN_NOISE_MULTIPLIER:
            raise TaskSpecError(
                f"{cls.name}: its releases (sums, counts, steps) over the whole cohort compose to one Gaussian at "
                f"noise multiplier {composed:.3g}, below {MIN_NOISE_MULTIPLIER:g} (ε above 90): raise "
                "hyperparameters.noise_multiplier or release fewer counts"
            )
        return profile

    def to_wire(self) -> pb.DPHyperparameters:
        """The message :meth:`from_wire` reads back as this profile."""
        message = pb.DPHyperparameters(
            release_noisy_count=self.release_noisy_count, release_dropped_units=self.release_dropped_units
        )
        for name, value in self.values().items():
            setattr(message, name, value)
        return message

    def values(self) -> dict[str, float]:
        """The declared hyperparameters' values, by name, in field order."""
        return {hyperparameter.name: getattr(self, hyperparameter.name) for hyperparameter in self.declared()}

    def audit_fields(self) -> dict[str, float | int | bool]:
        """What the audit log records of the task's settings: every field."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @property
    def count_noise_multiplier(self) -> float | None:
        """The noisy count's noise multiplier, or None when the task releases no count."""
        return self.noise_multiplier if self.release_noisy_count else None

    @property
    def dropped_noise_multiplier(self) -> float | None:
        """DROPPED_UNITS's noise multiplier (sensitivity 1), or None when the task does not release it."""
        return self.noise_multiplier if self.release_dropped_units else None

    def mechanism(self) -> Mechanism:
        """What the ledger charges for the task.

        Accounted on the grid of :func:`accounting_grid`: q rounded up and sigma
        down (epsilon only grows), so that a coordinator cannot make every
        reservation slow with settings that differ by 1e-9.

        The counts released beside the sums (NOISY_COUNT, DROPPED_UNITS), each with
        sensitivity 1 and noise sigma, are handed to :meth:`accounted_as` as the one
        Gaussian they make together (sigma / sqrt(2) for both): the kind then composes
        it with its sums' (:func:`combined_noise_multiplier` is associative). A task
        that asks for neither is charged exactly as it was before DROPPED_UNITS existed.
        """
        q = min(1.0, accounting_grid(self.sampling_rate, up=True))
        sigma = accounting_grid(self.noise_multiplier, up=False)
        counts = [sigma for asked in (self.release_noisy_count, self.release_dropped_units) if asked]
        return self.accounted_as(q, sigma, combined_noise_multiplier(*counts) if counts else None)

    @abstractmethod
    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        """The kind's mechanism at these (accounting) values of q, sigma and ``count``: the noise
        multiplier of the counts released with the sums, as one Gaussian (None: no count)."""

    @abstractmethod
    def release(self, manifest: Manifest) -> Release:
        """What an honest worker returns for this task on a package with ``manifest``."""

    @abstractmethod
    def compute(self, computation: Computation | PlanComputation) -> Released:
        """Runs in the worker process, after it reported "computing": from here on rows are read.

        The worker prepares a :class:`Computation` for a kind that runs a package graph and a
        :class:`PlanComputation` for one that runs the package's plan (``graph`` None).
        """


@functools.cache
def _declared(profile: type[TaskProfile]) -> tuple[Hyperparameter, ...]:
    hints = typing.get_type_hints(profile, include_extras=True)
    declared = []
    for field in dataclasses.fields(profile):
        for note in getattr(hints[field.name], "__metadata__", ()):
            if isinstance(note, Hyperparameter):
                declared.append(note)
    return tuple(declared)
