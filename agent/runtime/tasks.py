"""The three task computations, as plain functions over a compiled wrapper and a row source.

Each step streams one full pass of the usable rows, draws a fresh Poisson sample
(:class:`~agent.privacy.sampling.PoissonSampler`), runs the isolation wrapper on the
sampled rows of each batch and adds Gaussian noise (:class:`~agent.privacy.noise.GaussianNoise`)
to the step's total. Only the noisy totals leave: no sample size, no number of clipped or
zeroed examples, nothing per example.

Noise and sensitivity (adjacency: one row added or removed, which is what the
Poisson-subsampled Gaussian accountant assumes; where the dataset declares a privacy unit,
one unit with all its rows, sampled as a whole, with "row" below read as "unit": the
wrapper bounds each unit's total, see :mod:`agent.runtime.contribution`):

* ``dp_gradient``: the clipped gradient sum has L2 sensitivity ``C``; every coordinate
  gets ``N(0, (sigma*C)^2)``. Accounted as ``Mechanism.dp_gradient(q, sigma, count_sigma)``.
* ``dp_local_training``: K such steps; step ``k`` updates
  ``theta <- theta - eta * noisy_sum_k / (q * N)`` (DP-SGD normalised by the *expected*
  batch size ``q*N``, not the random sample size, which would be a private quantity).
  ``N`` is the number of usable rows counted in the same pass unless the caller passes a
  public ``expected_rows``; note that the released delta scales with ``1/N``, so an exact
  ``N`` is revealed to roughly the precision the noise allows. Returns
  ``theta_K - theta_0``. Accounted as ``Mechanism.dp_local_training(q, sigma, K)``.
* ``dp_evaluate``: metric ``m`` is clipped into ``[low_m, high_m]``, so one row moves its
  sum by at most ``S_m = max(|low_m|, |high_m|)`` (not ``high_m - low_m``: removing a row
  removes its whole value); the metrics of a group are bounded together, by their common
  ``S_m`` in L2 (``Manifest.metric_groups``). One row moves the vector of sums
  ``(sum_m / S_m)`` by at most ``sqrt(B)`` in L2, ``B`` the number of blocks (a group, or
  a metric of none; ``M`` without groups), so metric ``m`` gets
  ``N(0, (sigma * sqrt(B) * S_m)^2)`` (``Manifest.metric_noise_scales``): a Gaussian
  mechanism with noise multiplier exactly ``sigma``, accounted as
  ``Mechanism.dp_evaluate(sigma, q, count_sigma)``.
* Optional noisy count (``count_noise_multiplier`` = ``sigma_c``): the number of sampled
  usable rows plus ``N(0, sigma_c^2)`` (sensitivity 1). It shares the step's sample with
  the sums, so the accountant combines both into one Gaussian
  (``agent.privacy.mechanism.combined_noise_multiplier``).
* Optional dropped units (``dropped_noise_multiplier`` = ``sigma_d``, ``dp_evaluate`` at
  ``q = 1`` only): how many units lost at least one row to a missing value in a used
  column, as the row source counted them in this task's reading of the rows
  (:func:`agent.runtime.rows.dropped_units`), plus ``N(0, sigma_d^2)``. One unit moves it
  by at most 1 however many of its rows were dropped. A unit all of whose rows were dropped
  is in no sample, hence ``q = 1``: the count is of the whole cohort, as the sums then are,
  and the accountant combines it with them like the noisy count.

``sigma = 0`` is accepted here (tests, benchmarks); the request checks refuse it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from agent.privacy.noise import GaussianNoise, NoiseReserve
from agent.privacy.sampling import PoissonSampler, padded_row_count
from agent.runtime.errors import HyperparameterError, NoUsableRowsError, TaskCancelledError
from agent.runtime.isolation import GraphRole
from agent.runtime.parameters import checked_parameters
from agent.runtime.rows import RowBatch, RowSource, dropped_units
from agent.runtime.sessions import CompiledWrapper

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]


def _finite(name: str, value: float, *, minimum: float, strict: bool) -> float:
    number = float(value)
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        relation = ">" if strict else ">="
        raise HyperparameterError(name, f"must be a finite number {relation} {minimum:g}, got {value!r}")
    return number


def _rate(value: float) -> float:
    number = float(value)
    if not (math.isfinite(number) and 0.0 < number <= 1.0):
        raise HyperparameterError("sampling_rate", f"must lie in (0, 1], got {value!r}")
    return number


@dataclass(frozen=True)
class GradientSettings:
    """``dp_gradient`` and each ``dp_local_training`` step."""

    clip_norm: float
    noise_multiplier: float
    sampling_rate: float
    count_noise_multiplier: float | None = None
    """Release a noisy sample size with this noise multiplier (``None``: no count)."""

    def __post_init__(self) -> None:
        _finite("clip_norm", self.clip_norm, minimum=0.0, strict=True)
        _finite("noise_multiplier", self.noise_multiplier, minimum=0.0, strict=False)
        _rate(self.sampling_rate)
        if self.count_noise_multiplier is not None:
            _finite("count_noise_multiplier", self.count_noise_multiplier, minimum=0.0, strict=False)


@dataclass(frozen=True)
class TrainingSettings:
    step: GradientSettings
    local_steps: int
    learning_rate: float
    expected_rows: int | None = None
    """A public row count to normalise by; ``None``: the usable rows counted in each pass."""

    def __post_init__(self) -> None:
        if isinstance(self.local_steps, bool) or not isinstance(self.local_steps, int) or self.local_steps < 1:
            raise HyperparameterError("local_steps", f"must be an integer >= 1, got {self.local_steps!r}")
        _finite("learning_rate", self.learning_rate, minimum=0.0, strict=True)
        if self.expected_rows is not None and self.expected_rows < 1:
            raise HyperparameterError("expected_rows", "must be >= 1")


@dataclass(frozen=True)
class EvaluationSettings:
    noise_multiplier: float
    sampling_rate: float = 1.0
    count_noise_multiplier: float | None = None
    dropped_noise_multiplier: float | None = None
    """Release the units dropped for a missing value with this noise multiplier (``None``: not)."""

    def __post_init__(self) -> None:
        _finite("noise_multiplier", self.noise_multiplier, minimum=0.0, strict=False)
        _rate(self.sampling_rate)
        if self.count_noise_multiplier is not None:
            _finite("count_noise_multiplier", self.count_noise_multiplier, minimum=0.0, strict=False)
        if self.dropped_noise_multiplier is not None:
            _finite("dropped_noise_multiplier", self.dropped_noise_multiplier, minimum=0.0, strict=False)
            # The task profile refuses it first; this holds for every other caller too.
            if self.sampling_rate != 1.0:
                raise HyperparameterError(
                    "sampling_rate", "must be 1 to release the dropped units (a sample does not read them all)"
                )


@dataclass(frozen=True)
class Controls:
    """``progress(fraction)`` after each step (fraction of steps done, ending at 1.0);
    ``cancelled()`` is polled before every batch and raises :class:`TaskCancelledError`.

    ``pad_timing``: run the wrapper on as many rows in every step whatever the Poisson
    sample's size (see :func:`_pad`); off only in benchmarks that measure its cost.
    ``max_rows_per_unit``: for rows grouped by privacy unit, the cap on a unit's rows.
    """

    progress: Callable[[float], None] | None = None
    cancelled: Callable[[], bool] | None = None
    pad_timing: bool = True
    max_rows_per_unit: int = 1
    """The public cap on a unit's rows (the policy's), which the padded size is computed from."""


@dataclass(frozen=True)
class Randomness:
    """Generators for sampling and noise. Leave both ``None`` outside tests: the
    defaults are seeded from the OS's secure randomness."""

    sampling: np.random.Generator | None = None
    noise: np.random.Generator | None = None
    # Secure noise drawn ahead of time (a warm worker's); ignored when ``noise`` is given.
    normals: NoiseReserve | None = None


@dataclass(frozen=True, eq=False)
class GradientRelease:
    sums: Mapping[str, Float32Array]
    """Noisy clipped gradient sum per parameter, in manifest order and declared shapes."""
    noisy_count: float | None = None


@dataclass(frozen=True, eq=False)
class TrainingRelease:
    delta: Mapping[str, Float32Array]
    """``theta_K - theta_0`` per parameter."""
    steps: int


@dataclass(frozen=True, eq=False)
class EvaluationRelease:
    sums: Mapping[str, float]
    """Noisy sum of each clipped metric, in manifest order."""
    noisy_count: float | None = None
    dropped_units: float | None = None
    """Units with a row dropped for a missing value, plus noise (``None``: not asked for)."""


@dataclass
class _Pass:
    total: Float64Array
    sampled: int = 0
    """Units sampled (rows, when the dataset declares no unit)."""
    usable: int = 0
    """Units read."""
    rows_sampled: int = 0
    rows_usable: int = 0
    grouped: bool = False
    """Whether the rows came grouped by privacy unit."""


def _sampled_pass(
    wrapper: CompiledWrapper,
    rows: RowSource,
    parameters: Mapping[str, Float32Array],
    *,
    sampler: PoissonSampler,
    clip_norm: float | None,
    controls: Controls,
) -> _Pass:
    """One pass over the usable rows with a fresh Poisson sample: the exact clipped sum."""
    total: Float64Array | None = None
    result = _Pass(np.zeros(0, np.float64))
    spare: RowBatch | None = None
    for batch in rows.batches():
        if controls.cancelled is not None and controls.cancelled():
            raise TaskCancelledError("the task was cancelled")
        result.usable += batch.units
        result.rows_usable += batch.size
        # Units (all their rows) join the sample, not rows.
        sample = batch.select(sampler.mask(batch.units))
        result.sampled += sample.units
        result.rows_sampled += sample.size
        if spare is None or (spare.size == 0 and sample.size > 0):
            # Rows to pad with: sampled ones, or zeros of the right shape (no row's values)
            # if nothing was sampled. Copied so as not to keep the whole batch in memory.
            source = sample if sample.size > 0 else RowBatch(np.zeros_like(batch.x[:1]), np.zeros_like(batch.y[:1]))
            spare = RowBatch(source.x[:_PAD_CHUNK].copy(), source.y[:_PAD_CHUNK].copy())
        result.grouped = batch.unit_starts is not None
        summed = wrapper.clipped_sum(parameters, sample, clip_norm)
        # The first batch's sum is the running total: for a large model a zeroed array
        # and an addition of its size would cost as much as the graph itself.
        if total is None:
            total = summed
        else:
            total += summed
    result.total = total if total is not None else np.zeros(wrapper.layout.size, np.float64)
    if controls.pad_timing and spare is not None:
        # From the rows read (which a timer of the full pass sees anyway) and the public cap on
        # a unit's rows, never from the sizes of actual units: Σ n² ≤ cap · Σ n.
        cap = controls.max_rows_per_unit if result.grouped else 1
        padded = padded_row_count(result.rows_usable, cap * result.rows_usable, cap, sampler.rate)
        _pad(wrapper, parameters, spare, clip_norm, padded - result.rows_sampled, grouped=result.grouped)
    return result


# Padding rows are run through the wrapper this many at a time (bounded memory).
_PAD_CHUNK = 4096


def _pad(
    wrapper: CompiledWrapper,
    parameters: Mapping[str, Float32Array],
    spare: RowBatch,
    clip_norm: float | None,
    rows: int,
    *,
    grouped: bool = False,
) -> None:
    """Runs the wrapper on ``rows`` more rows and throws the result away.

    A step's duration would otherwise grow with its Poisson sample's size, which is
    not noised: a coordinator timing the steps (progress messages arrive after each)
    would learn it. Each step instead runs the wrapper on padded_row_count(...) rows, a
    size that depends only on the usable rows N (which the full pass over the data
    reveals to a timer anyway), on q and, with privacy units, on the policy's cap on a
    unit's rows, and that the sample exceeds with probability at most 1e-9. The extra
    rows repeat the step's own sampled rows, so they cost what sampled rows cost
    (validated graphs have no data-dependent shapes) and make the step depend on no row
    outside its sample; their results never reach the released sums.
    """
    while rows > 0:
        count = min(rows, _PAD_CHUNK)
        cycle = np.arange(count) % spare.size  # as many calls, of the same sizes, however few rows spare has
        # Grouped rows are padded as units of one row each, through the same per-unit wrapper as
        # the sample (a unit's rows cost what a row costs there, up to how they share blocks).
        units = np.arange(count, dtype=np.int64) if grouped else None
        wrapper.clipped_sum(parameters, RowBatch(spare.x[cycle], spare.y[cycle], units), clip_norm)  # discarded
        rows -= count


def _require(wrapper: CompiledWrapper, role: GraphRole) -> None:
    if wrapper.role is not role:
        raise ValueError(f"this task needs the {role.value} wrapper, got the {wrapper.role.value} one")


def _noisy_count(noise: GaussianNoise, count: int, multiplier: float | None) -> float | None:
    return None if multiplier is None else noise.scalar(float(count), multiplier)


def _float32(values: Mapping[str, npt.NDArray[np.floating]]) -> Mapping[str, Float32Array]:
    return MappingProxyType({name: np.asarray(value, np.float32) for name, value in values.items()})


def _report(controls: Controls, fraction: float) -> None:
    if controls.progress is not None:
        controls.progress(fraction)


def dp_gradient(
    wrapper: CompiledWrapper,
    rows: RowSource,
    parameters: Mapping[str, npt.ArrayLike],
    settings: GradientSettings,
    *,
    controls: Controls | None = None,
    randomness: Randomness | None = None,
) -> GradientRelease:
    """One noisy clipped gradient sum over one Poisson sample (DP-FedSGD)."""
    _require(wrapper, GraphRole.GRADIENT)
    controls = controls or Controls()
    randomness = randomness or Randomness()
    params = checked_parameters(wrapper.manifest, parameters)
    sampler = PoissonSampler(settings.sampling_rate, randomness.sampling)
    noise = GaussianNoise(randomness.noise, randomness.normals)
    step = _sampled_pass(wrapper, rows, params, sampler=sampler, clip_norm=settings.clip_norm, controls=controls)
    noisy = noise.perturb_in_place(step.total, settings.noise_multiplier * settings.clip_norm)
    count = _noisy_count(noise, step.sampled, settings.count_noise_multiplier)
    _report(controls, 1.0)
    return GradientRelease(_float32(wrapper.unflatten(noisy)), count)


def dp_local_training(
    wrapper: CompiledWrapper,
    rows: RowSource,
    parameters: Mapping[str, npt.ArrayLike],
    settings: TrainingSettings,
    *,
    controls: Controls | None = None,
    randomness: Randomness | None = None,
) -> TrainingRelease:
    """K DP-SGD steps from ``parameters``; returns the parameter delta (DP-FedAvg).

    No count is released here even if ``settings.step.count_noise_multiplier`` is set.
    """
    _require(wrapper, GraphRole.GRADIENT)
    controls = controls or Controls()
    randomness = randomness or Randomness()
    start = checked_parameters(wrapper.manifest, parameters)
    step_settings = settings.step
    sampler = PoissonSampler(step_settings.sampling_rate, randomness.sampling)
    noise = GaussianNoise(randomness.noise, randomness.normals)
    theta0 = np.concatenate([start[slot.name].reshape(-1).astype(np.float64) for slot in wrapper.layout.slots])
    theta = theta0.copy()
    for k in range(settings.local_steps):
        current = {name: value.astype(np.float32) for name, value in wrapper.unflatten(theta).items()}
        step = _sampled_pass(
            wrapper, rows, current, sampler=sampler, clip_norm=step_settings.clip_norm, controls=controls
        )
        rows_n = settings.expected_rows if settings.expected_rows is not None else step.usable
        if rows_n == 0:
            raise NoUsableRowsError("the dataset has no usable rows (every row holds a null in a used column)")
        noisy = noise.perturb(step.total, step_settings.noise_multiplier * step_settings.clip_norm)
        theta = theta - settings.learning_rate * noisy / (step_settings.sampling_rate * rows_n)
        _report(controls, (k + 1) / settings.local_steps)
    # The delta in float64 before the final cast: theta - theta0 in float32 would lose
    # the low digits of small updates.
    return TrainingRelease(_float32(wrapper.unflatten(theta - theta0)), settings.local_steps)


def dp_evaluate(
    wrapper: CompiledWrapper,
    rows: RowSource,
    parameters: Mapping[str, npt.ArrayLike],
    settings: EvaluationSettings,
    *,
    controls: Controls | None = None,
    randomness: Randomness | None = None,
) -> EvaluationRelease:
    """Noisy sums of the clipped per-example metrics over a Poisson sample (all rows at q = 1)."""
    _require(wrapper, GraphRole.EVALUATION)
    controls = controls or Controls()
    randomness = randomness or Randomness()
    params = checked_parameters(wrapper.manifest, parameters)
    sampler = PoissonSampler(settings.sampling_rate, randomness.sampling)
    noise = GaussianNoise(randomness.noise, randomness.normals)
    step = _sampled_pass(wrapper, rows, params, sampler=sampler, clip_norm=None, controls=controls)
    # Noise scaled per metric: std_m = sigma * sqrt(blocks) * bound_m (Manifest.metric_noise_scales).
    scales = np.array(wrapper.manifest.metric_noise_scales(), np.float64)
    noisy = step.total + noise.perturb(np.zeros_like(step.total), settings.noise_multiplier) * scales
    count = _noisy_count(noise, step.sampled, settings.count_noise_multiplier)
    noisy_dropped = None
    if settings.dropped_noise_multiplier is not None:
        # Read after the pass: the row source counted them in the reading this pass made (or prepared).
        noisy_dropped = noise.scalar(float(dropped_units(rows)), settings.dropped_noise_multiplier)
    _report(controls, 1.0)
    return EvaluationRelease(
        MappingProxyType({slot.name: float(noisy[slot.offset]) for slot in wrapper.layout.slots}),
        count,
        noisy_dropped,
    )
