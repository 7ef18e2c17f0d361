"""The life of a task: admit (policy, package, budget), execute in a worker, settle the ledger.

Every admitted task holds a reservation in the privacy ledger, and every path
out of it settles that reservation exactly once:
  result computed  -> commit (before the result is handed to the caller)
  no result exists -> refund
  agent dies       -> the reservation is found at start-up and counted as spent
Each step is audited: task.started, then task.finished or task.failed (or
task.refused for a task refused before it was admitted).
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from agent.audit.events import RpcDecision, TaskAbout, TaskFailed, TaskFinished, TaskRefused, TaskStarted
from agent.audit.sink import AuditSink
from agent.datasets import DatasetCatalog, DatasetSpec, UnknownDatasetError, row_count_bucket
from agent.governance.approvals import approval_in_force, honour
from agent.governance.decisions import (
    Action,
    Decision,
    Request,
    TaskRequest,
    UsageState,
    check_coordinator,
    dataset_not_found,
    decide,
    visible_datasets,
)
from agent.governance.in_force import PolicyInForce
from agent.governance.model import CoordinatorRule, DatasetRule, Policy
from agent.governance.publishers import trust_store
from agent.packages import PackageLimits, PackageRejected, PackageStatus, PackageStore, VerifiedPackage
from agent.packages.manifest import Manifest
from agent.packages.verified_cache import VerificationCache
from agent.privacy.errors import AccountingSettingsError, BudgetExceededError, PrivacyError, RateLimitError
from agent.privacy.ledger import PrivacyLedger, RateLimit, Reservation
from agent.refusal import Refusal
from agent.tasks.computation import TaskJob, compute_task
from agent.tasks.errors import TaskSpecError
from agent.tasks.failure import FailureKind
from agent.tasks.spec import TaskSpecification, check_against_package
from agent.tasks.worker import Released, TaskFailedError, WorkerLimits, WorkerPool

# What the coordinator hears about any failure after rows were read (the details stay in the local log).
RESOURCE_FAILURES = frozenset({FailureKind.MEMORY, FailureKind.CPU_TIME, FailureKind.WALL_TIME})
DATA_FAILURE = "the task failed while computing on the dataset; it was charged. The hospital's log has the details"


class TaskRefusedError(Exception):
    """The task may not run: ``refusal`` is what the caller is told, ``reason`` is safe to send."""

    def __init__(self, refusal: Refusal, reason: str, rule: str = "") -> None:
        super().__init__(reason)
        self.refusal = refusal
        self.reason = reason
        self.rule = rule


@dataclass(frozen=True)
class Admission:
    task_id: str
    caller: str
    spec: TaskSpecification
    job_template: TaskJob
    budget_group: str
    # The group's ε with this task counted, and this task's share of it (after - before).
    epsilon_reserved: float
    epsilon_share: float
    epsilon_limit: float
    delta: float
    limits: WorkerLimits
    # What each of the task's audit events says of it.
    about: TaskAbout


@dataclass(frozen=True)
class TaskOutcome:
    tensors: Mapping[str, npt.NDArray[np.generic]]
    scalars: Mapping[str, float]
    # This task's share of the group's ε: how much committing it raised the composed ε.
    epsilon_charged: float
    # The budget group's ε with this task counted (ε composes, it does not add up).
    budget_epsilon_spent: float
    delta: float


@dataclass
class _Running:
    admission: Admission
    cancelled: threading.Event
    # Once the worker runs, only the executing thread settles the reservation.
    executing: bool = False


class TaskRunner:
    def __init__(
        self,
        *,
        policy: PolicyInForce,
        catalog: DatasetCatalog,
        packages: PackageStore,
        ledger: PrivacyLedger,
        workers: WorkerPool,
        audit: AuditSink,
        logger: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        package_limits: PackageLimits | None = None,
        verified: VerificationCache | None = None,
        scratch: Path | None = None,
    ) -> None:
        # Where a task may spill a dataset's rows grouped by privacy unit: one private
        # directory per task inside it, removed when the task ends however it ends.
        self._scratch = scratch
        self._policy = policy
        self._catalog = catalog
        self._packages = packages
        self._ledger = ledger
        self._workers = workers
        self._audit = audit
        self._logger = logger
        self._clock = clock
        self._package_limits = package_limits or PackageLimits()
        self._verified = verified if verified is not None else VerificationCache()
        self._running: dict[str, _Running] = {}
        # Admitted tasks not yet settled, plus admissions in progress.
        self._slots = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        """Ends the warm workers waiting for a run's next task."""
        self._workers.close()

    # ------------------------------------------------------------ admission

    def check_caller(self, caller: str) -> None:
        """Before anything is read: only coordinators the policy knows may run tasks (refusals audited)."""
        policy = self._policy.current()
        self._refuse_unknown_caller(caller, None, policy, self._clock())

    def admit(self, caller: str, spec: TaskSpecification, cancelled: threading.Event) -> Admission:
        """Checks everything, then reserves the budget; raises TaskRefusedError (audited) otherwise.

        The steps, in order: who is asking, the package, the policy's decision, a
        concurrency slot, the budget, and registration. The admitted task is
        registered as running before anything else can fail, so that every later
        exit is settled by settle_if_open().
        """
        policy = self._policy.current()
        now = self._clock()
        # Who is asking comes first (again: the policy may have been reloaded since
        # check_caller): an unknown caller learns nothing about packages or datasets.
        self._refuse_unknown_caller(caller, spec, policy, now)
        verified = self._verified_package(caller, spec, policy, now)
        dataset, rule, cohort = self._decide(caller, spec, verified.manifest, policy, now)
        self._claim_slot(caller, spec, policy)
        task_id = "task-" + secrets.token_hex(12)
        try:
            reservation = self._reserve(caller, spec, policy, rule, task_id)
        except BaseException:
            with self._lock:
                self._slots -= 1
            raise
        job = _job_template(spec, verified, dataset, rule, cohort)
        return self._register(
            task_id, caller, spec, cancelled=cancelled, job=job, rule=rule, policy=policy, reservation=reservation,
            units=cohort,
        )

    def _verified_package(
        self, caller: str, spec: TaskSpecification, policy: Policy, now: dt.datetime
    ) -> VerifiedPackage:
        """The task's package, approved, verified against the trust store in force, and fitting the request."""
        stored = self._packages.get(spec.package_digest)
        if stored is None:
            raise self._refuse(
                caller, spec, Refusal.NOT_FOUND, f"package {spec.package_digest} is not stored on this agent",
                "package.unknown",
            )
        if policy.packages.require_approval:
            # A listed reviewer's signature decides, not the store's status column: whoever can write
            # the state directory can edit that with one SQL UPDATE.
            review = approval_in_force(self._packages, stored, policy.reviewers)
            if review.approval is None:
                raise self._refuse(
                    caller, spec, Refusal.PRECONDITION, f"package {stored.name} {stored.version} {review.reason}",
                    review.rule,
                )
            honour(self._packages, stored, review.approval, self._audit, now)
        elif stored.status is not PackageStatus.APPROVED:
            why = "awaits review by the hospital" if stored.status is PackageStatus.PENDING else "was rejected"
            raise self._refuse(
                caller, spec, Refusal.PRECONDITION, f"package {stored.name} {stored.version} {why}",
                f"package.{stored.status.value}",
            )
        try:
            # Verified again against the trust store in force: a key revoked since upload stops its packages.
            # (Kept verifications are keyed by the policy and trust store, and end at a key's expiry.)
            verified = self._verified.open_verified(
                self._packages, spec.package_digest, trust_store(policy), self._package_limits, now,
                policy_digest=policy.digest,
            )
            check_against_package(spec, verified.manifest)
        except PackageRejected as exc:
            raise self._refuse(caller, spec, exc.code.refusal, str(exc), f"package.{exc.code.value}") from None
        except TaskSpecError as exc:
            raise self._refuse(caller, spec, Refusal.INVALID, str(exc), "task.package_mismatch") from None
        return verified

    def _decide(
        self, caller: str, spec: TaskSpecification, manifest: Manifest, policy: Policy, now: dt.datetime
    ) -> tuple[DatasetSpec, DatasetRule, int | None]:
        """The policy's decision (audited); the dataset, its rule and its unit count when allowed."""
        # A dataset the caller may not see is not read before the refusal: how long reading its files
        # takes would tell a hidden dataset from an absent one.
        if visible_datasets(caller, policy, now, [spec.dataset_id]):
            dataset, cohort = self._dataset(spec.dataset_id)
        else:
            dataset, cohort = self._catalogued(spec.dataset_id), None
        request = Request(
            caller,
            Action.RUN_TASK,
            now,
            dataset_id=spec.dataset_id,
            dataset_known=dataset is not None,
            task=TaskRequest(
                profile=spec.profile,
                package_name=manifest.name,
                columns=frozenset(manifest.columns),
                label_columns=frozenset(manifest.outcome_columns),
                purpose=spec.purpose,
                cohort_size=cohort,
                privacy_unit=dataset.privacy_unit if dataset is not None else None,
            ),
        )
        decision = decide(request, policy, self._usage(caller, now))
        self._audit_decision(caller, spec, decision, policy.digest)
        if decision.refusal is not None:
            raise TaskRefusedError(decision.refusal, decision.message, decision.rule)
        rule = policy.dataset_rule(spec.dataset_id)
        if rule is None or dataset is None:  # decide() refuses both; kept explicit for the reader
            raise TaskRefusedError(Refusal.NOT_FOUND, dataset_not_found(spec.dataset_id), "dataset.no_policy")
        return dataset, rule, cohort

    def _claim_slot(self, caller: str, spec: TaskSpecification, policy: Policy) -> None:
        """The concurrency limit is claimed atomically here; decide() only saw a snapshot."""
        with self._lock:
            refused = self._slots >= policy.limits.max_concurrent_tasks
            if not refused:
                self._slots += 1
        if refused:
            raise self._refuse(
                caller,
                spec,
                Refusal.EXHAUSTED,
                f"this agent runs at most {policy.limits.max_concurrent_tasks} tasks at a time; try again later",
                "limits.concurrent_tasks",
            )

    def _register(
        self,
        task_id: str,
        caller: str,
        spec: TaskSpecification,
        *,
        cancelled: threading.Event,
        job: TaskJob,
        rule: DatasetRule,
        policy: Policy,
        reservation: Reservation,
        units: int | None,
    ) -> Admission:
        """The admitted task, registered as running (settle_if_open settles it from now on) and audited.

        ``units``: the dataset's unit count at admission (patients, or rows where no unit is declared).
        """
        manifest = job.manifest
        # A compliance officer reads from each task entry what its ε protects: a whole patient (the
        # unit column, named here because the log stays at the hospital) or a single row.
        unit = job.dataset.privacy_unit
        admission = Admission(
            task_id=task_id,
            caller=caller,
            spec=spec,
            job_template=job,
            budget_group=rule.budget_group,
            epsilon_reserved=reservation.epsilon_after,
            epsilon_share=reservation.epsilon_share,
            epsilon_limit=rule.epsilon_budget,
            delta=rule.delta,
            limits=WorkerLimits(
                memory_bytes=policy.limits.task_memory_mb * 1024 * 1024,
                cpu_seconds=policy.limits.task_seconds,
                wall_seconds=float(policy.limits.task_seconds),
            ),
            about=TaskAbout(
                task_id=task_id,
                coordinator=caller,
                dataset=spec.dataset_id,
                budget_group=rule.budget_group,
                package_digest=spec.package_digest,
                package_name=manifest.name,
                package_version=manifest.version.text,
                task_kind=spec.profile.name,
                purpose=spec.purpose,
                run_id=spec.run_id,
                round=spec.round,
                correlation_id=spec.correlation_id,
                privacy_unit=unit,
                max_rows_per_unit=job.max_rows_per_unit if unit is not None else None,
                unit_count=row_count_bucket(units) if units is not None else None,
            ),
        )
        with self._lock:
            self._running[task_id] = _Running(admission, cancelled)
        self._audit.record(
            TaskStarted(
                **admission.about,
                hyperparameters=spec.profile.audit_fields(),
                epsilon_reserved=reservation.epsilon_after,
                delta=rule.delta,
            )
        )
        return admission

    def _reserve(
        self, caller: str, spec: TaskSpecification, policy: Policy, rule: DatasetRule, task_id: str
    ) -> Reservation:
        # The rate limits are counted in the ledger's write transaction that inserts the
        # reservation; decide() saw only a snapshot, which a burst of requests could all pass.
        coordinator = policy.coordinators.get(caller)
        try:
            return self._ledger.reserve(
                rule.budget_group,
                task_id,
                spec.profile.mechanism(),
                limit_epsilon=rule.epsilon_budget,
                delta=rule.delta,
                coordinator=caller,
                dataset=spec.dataset_id,
                correlation_id=spec.correlation_id,
                rate_limits=() if coordinator is None else rate_limits(coordinator),
                max_settings=policy.limits.max_accounting_settings,
            )
        except BudgetExceededError as exc:
            raise self._refuse(caller, spec, Refusal.EXHAUSTED, str(exc), "budget.exceeded") from None
        except RateLimitError as exc:
            raise self._refuse(caller, spec, Refusal.EXHAUSTED, str(exc), f"coordinator.rate_{exc.per}") from None
        except AccountingSettingsError as exc:
            raise self._refuse(caller, spec, Refusal.PRECONDITION, str(exc), "budget.accounting_settings") from None
        except PrivacyError as exc:
            self._logger.error("ledger.reserve_failed", error=str(exc))
            message = "the privacy ledger cannot be written; try again later"
            raise self._refuse(caller, spec, Refusal.UNAVAILABLE, message, "ledger.unavailable") from None

    def _refuse_unknown_caller(
        self, caller: str, spec: TaskSpecification | None, policy: Policy, now: dt.datetime
    ) -> None:
        coordinator = check_coordinator(caller, policy, now)
        if isinstance(coordinator, Decision) and coordinator.refusal is not None:
            self._audit_decision(caller, spec, coordinator, policy.digest)
            raise TaskRefusedError(coordinator.refusal, coordinator.message, coordinator.rule)

    def _audit_decision(
        self, caller: str, spec: TaskSpecification | None, decision: Decision, policy_digest: str
    ) -> None:
        self._audit.record(
            RpcDecision.of(
                decision,
                method="RunTask",
                coordinator=caller,
                dataset=None if spec is None else spec.dataset_id,
                package_digest=None if spec is None else spec.package_digest,
                task_kind=None if spec is None else spec.profile.name,
                correlation_id=None if spec is None else spec.correlation_id,
                policy_digest=policy_digest,
            )
        )

    def _catalogued(self, dataset_id: str) -> DatasetSpec | None:
        """The dataset's declaration, without reading its files."""
        try:
            return self._catalog.get(dataset_id)
        except UnknownDatasetError:
            return None

    def _dataset(self, dataset_id: str) -> tuple[DatasetSpec | None, int | None]:
        try:
            inspection = self._catalog.inspect(dataset_id)
        except UnknownDatasetError:
            return None, None
        if not inspection.available:
            return inspection.spec, None  # decide() refuses: the cohort size cannot be known now
        # Patients where the dataset declares a unit, else rows: what cohort minimums and buckets count.
        return inspection.spec, inspection.units

    def _usage(self, caller: str, now: dt.datetime) -> UsageState:
        with self._lock:
            running = self._slots
        last_hour, last_day = self._ledger.tasks_started_since_each(
            caller, (now - dt.timedelta(hours=1), now - dt.timedelta(days=1))
        )
        return UsageState(tasks_last_hour=last_hour, tasks_last_day=last_day, running_tasks=running)

    def _refuse(
        self, caller: str, spec: TaskSpecification, refusal: Refusal, reason: str, rule: str
    ) -> TaskRefusedError:
        self._audit.record(
            TaskRefused(
                coordinator=caller,
                dataset=spec.dataset_id,
                package_digest=spec.package_digest,
                task_kind=spec.profile.name,
                purpose=spec.purpose,
                run_id=spec.run_id,
                round=spec.round,
                outcome=refusal.value,
                rule=rule,
                reason=reason,
                correlation_id=spec.correlation_id,
            )
        )
        return TaskRefusedError(refusal, reason, rule)

    # ------------------------------------------------------------ running

    def _task_scratch(self, task_id: str) -> Path | None:
        """A fresh private directory for one task's spilled rows (None: the worker uses the system's)."""
        if self._scratch is None:
            return None
        self._scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory = self._scratch / task_id
        directory.mkdir(mode=0o700)
        return directory

    def cancel(self, caller: str, task_id: str) -> bool:
        """Cancels a running task of this caller; False if there is none (finished, unknown or not theirs)."""
        with self._lock:
            running = self._running.get(task_id)
        if running is None or running.admission.caller != caller:
            return False
        running.cancelled.set()
        return True

    def execute(
        self,
        admission: Admission,
        parameters: Mapping[str, npt.NDArray[np.generic]],
        *,
        on_progress: Callable[[float, str], None],
        cancelled: threading.Event,
    ) -> TaskOutcome:
        with self._lock:
            running = self._running.get(admission.task_id)
            if running is None:  # settled already: the call ended while parameters arrived
                raise TaskFailedError(FailureKind.CANCELLED, "the task was cancelled")
            running.executing = True
        scratch = self._task_scratch(admission.task_id)
        job = replace(
            admission.job_template,
            scratch_dir=scratch,
            # Grouping by unit holds up to about three copies of what it groups.
            grouping_bytes=max(16 * 1024 * 1024, admission.limits.memory_bytes // 8),
        )
        try:
            result = self._workers.run(
                compute_task,
                job,
                admission.limits,
                tensors=parameters,
                reuse_key=_reuse_key(admission),
                on_progress=on_progress,
                cancelled=cancelled,
            )
            check_result(result, admission)
        except TaskFailedError as exc:
            # Once rows were read, whether and how the task failed may depend on them
            # (a hostile graph can fail on chosen rows): that failure is charged, and a
            # graph failure is told only as one generic status. Resource limits keep
            # their status (the contract's RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED):
            # with static shapes and the same number of rows per step, memory and time
            # depend on the package and the dataset's size, not on row values.
            self.fail(admission, exc.kind, exc.message, exc.detail, charge=exc.progressed, rule=exc.rule)
            if exc.progressed and exc.kind in RESOURCE_FAILURES:
                raise TaskFailedError(exc.kind, f"{exc.message}; it was charged", progressed=True) from None
            if exc.progressed and exc.kind is not FailureKind.CANCELLED:
                raise TaskFailedError(FailureKind.CRASHED, DATA_FAILURE, progressed=True) from None
            raise
        except BaseException as exc:
            # A bug here must still settle the reservation; charged, since rows may have been read.
            self.fail(admission, FailureKind.CRASHED, "the task failed inside the agent", repr(exc), charge=True)
            raise TaskFailedError(FailureKind.CRASHED, "the task failed inside the agent", repr(exc)) from exc
        finally:
            # The worker has ended (or is done with this task): nothing may read the spilled rows now.
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        if not self._claim_settlement(admission):
            # Refunded meanwhile (the call ended): this result was never paid for and must not leave.
            raise TaskFailedError(FailureKind.CANCELLED, "the task was cancelled")
        # The cost is on disk before the result exists anywhere but in this process.
        try:
            self._ledger.commit(admission.task_id)
        except PrivacyError as exc:
            # Not refunded either: the reservation stays and is counted as spent at the next start.
            self._logger.error("ledger.commit_failed", task_id=admission.task_id, error=str(exc))
            raise TaskFailedError(FailureKind.CRASHED, "the privacy ledger cannot be written; no result") from None
        self._audit.record(
            TaskFinished(
                **admission.about,
                epsilon_charged=admission.epsilon_share,
                budget_epsilon_spent=admission.epsilon_reserved,
                budget_epsilon_limit=admission.epsilon_limit,
                delta=admission.delta,
                # As declared: check_result made the result exactly the declared release.
                released=admission.spec.profile.release(admission.job_template.manifest).audit_names(),
            )
        )
        return TaskOutcome(
            result.tensors, result.scalars, admission.epsilon_share, admission.epsilon_reserved, admission.delta
        )

    def fail(
        self,
        admission: Admission,
        kind: FailureKind,
        message: str,
        detail: str = "",
        *,
        charge: bool = False,
        rule: str = "",
    ) -> None:
        """The task ends without a result: refund its reservation (or charge it) and audit why
        (``rule``: the rule that refused the rows it read, e.g. dataset.min_cohort)."""
        if not self._claim_settlement(admission):
            return
        try:
            if charge:
                self._ledger.commit(admission.task_id)
            else:
                self._ledger.refund(admission.task_id)
        except PrivacyError as exc:
            # Left reserved: the next start counts it as spent.
            self._logger.error("ledger.settle_failed", task_id=admission.task_id, error=str(exc))
        if detail:
            self._logger.warning("task.failed_detail", task_id=admission.task_id, detail=detail)
        self._audit.record(
            TaskFailed(
                **admission.about,
                failure=kind.value,
                rule=rule or None,
                reason=message,
                charged=charge,
                epsilon_charged=admission.epsilon_share if charge else 0.0,
                budget_epsilon_spent=admission.epsilon_reserved if charge else None,
                budget_epsilon_limit=admission.epsilon_limit,
                delta=admission.delta,
            )
        )

    def settle_if_open(self, admission: Admission) -> None:
        """The RPC is over. A task still computing is cancelled (its thread settles it); one that
        never started computing is refunded here."""
        with self._lock:
            running = self._running.get(admission.task_id)
            executing = running is not None and running.executing
        if running is None:
            return
        running.cancelled.set()
        if not executing:
            self.fail(admission, FailureKind.ABANDONED, "the call ended before the task produced a result")

    def _claim_settlement(self, admission: Admission) -> bool:
        """True for the one caller that settles this reservation; the task stops counting as running."""
        with self._lock:
            claimed = self._running.pop(admission.task_id, None) is not None
            if claimed:
                self._slots -= 1
            return claimed


def _reuse_key(admission: Admission) -> tuple[str, ...] | None:
    """Tasks of one run, by one coordinator, of one package on one dataset share a warm worker.

    Without a run id there is no run to keep a worker for.
    """
    spec = admission.spec
    if not spec.run_id:
        return None
    return (admission.caller, spec.run_id, spec.package_digest, spec.dataset_id, spec.profile.name)


def rate_limits(coordinator: CoordinatorRule) -> tuple[RateLimit, ...]:
    """The coordinator's per-hour and per-day task limits, as the ledger counts them."""
    limits = []
    if coordinator.max_tasks_per_hour is not None:
        limits.append(RateLimit(coordinator.max_tasks_per_hour, dt.timedelta(hours=1), "hour"))
    if coordinator.max_tasks_per_day is not None:
        limits.append(RateLimit(coordinator.max_tasks_per_day, dt.timedelta(days=1), "day"))
    return tuple(limits)


def _job_template(
    spec: TaskSpecification, verified: VerifiedPackage, dataset: DatasetSpec, rule: DatasetRule, cohort: int | None
) -> TaskJob:
    """What the worker is sent for the task, less the parameters (they arrive after admission).

    ``cohort`` is the dataset's unit count (patients where a unit is declared, rows
    otherwise); the normalisation uses the lower edge of its bucket, which the
    coordinator already sees, so one unit more or less does not move it.
    """
    return TaskJob(
        profile=spec.profile,
        manifest=verified.manifest,
        graph=None if spec.profile.graph is None else verified.graphs[spec.profile.graph.value],
        dataset=dataset,
        parameters={},
        min_cohort_size=rule.min_cohort_size,
        normalising_rows=row_count_bucket(cohort)[0] if cohort is not None else 1,
        max_rows_per_unit=rule.max_rows_per_unit,
        min_cell_size=rule.min_cell_size,
    )


def check_result(result: Released, admission: Admission) -> None:
    """The worker is untrusted too: release only what the task kind declares, in declared shapes."""
    expected = admission.spec.profile.release(admission.job_template.manifest)
    expected_tensors = {p.name: p.shape for p in expected.tensors}
    expected_scalars = set(expected.scalars)
    shapes = {name: tuple(array.shape) for name, array in result.tensors.items()}
    problems = []
    if shapes != expected_tensors:
        problems.append(f"tensors {shapes} != {expected_tensors}")
    if set(result.scalars) != expected_scalars:
        problems.append(f"scalars {sorted(result.scalars)} != {sorted(expected_scalars)}")
    if problems:
        raise TaskFailedError(FailureKind.CRASHED, "the task failed inside the agent", "; ".join(problems),
                              progressed=True)
