"""`edge-agent doctor`: preflight checks of an installation, one line each, non-zero exit on a failure.

Every check reuses the loader the daemon itself uses (config, policy, TLS,
identity key, datasets), so "doctor passes" means "serve would start". The
package's postinst runs it as the service user and starts the service only
when it passes.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import enum
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from agent.cli.exit_codes import ExitCode
from agent.cli.settings import IdentityMismatchError, add_config_arguments, check_identity_pin, resolve_config
from agent.config import AgentConfig, ConfigError
from agent.datasets import DatasetCatalog, DatasetError, DatasetRegistry
from agent.datasets.inspection import inspect_dataset
from agent.governance.loader import load_policy
from agent.governance.model import Limits, Policy
from agent.identity.agent_key import KeyFileError, load_key_file
from agent.server.tls import load_server_tls
from agent.tasks.worker import WorkerPool, worker_startup_bytes

# No certificate of a running installation can predate this project; a clock
# before it is a machine that booted without a clock source.
EARLIEST_PLAUSIBLE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DEFAULT_LOGS_DIRECTORY = Path("/var/log/edge-agent")
# adjtimex(2) returns this state when the kernel's clock is not synchronized.
_TIME_ERROR = 5


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status.value:<4}  {self.name:<12}  {self.detail}"


@dataclass(frozen=True)
class DoctorLimits:
    cert_warn_days: int = 30
    cert_fail_days: int = 7
    min_free_bytes: int = 1024 * 1024 * 1024


def measure_worker_startup() -> int | None:
    """Starts one task worker the way the agent does and measures what it holds before any task work."""
    pool = WorkerPool(warm_workers=0)
    try:
        return worker_startup_bytes(pool)
    finally:
        pool.close()


@dataclass
class Doctor:
    """Runs the checks in order; later checks that need a valid config are skipped when it is not."""

    limits: DoctorLimits
    now: dt.datetime
    logs_directory: Path
    results: list[CheckResult] = field(default_factory=list)
    # Bytes of address space a task worker holds before any task work (None: unknown).
    worker_startup: Callable[[], int | None] = measure_worker_startup

    def run(self, resolve: Callable[[], AgentConfig]) -> list[CheckResult]:
        try:
            config = resolve()
        except ConfigError as exc:
            self._add("config", Status.FAIL, str(exc))
            return self.results
        source = str(config.source) if config.source else "development defaults"
        self._add("config", Status.OK, f"{source}: valid (agent id {config.agent_id})")
        policy = self._policy(config)
        if policy is not None:
            self._task_memory(policy.limits)
        self._identity(config)
        self._tls(config)
        self._datasets(config)
        for name, directory in (("state", config.state_dir), ("audit", config.audit.directory)):
            self._writable(name, directory)
        if self.logs_directory.exists():
            self._writable("logs", self.logs_directory)
        else:
            self._add("logs", Status.OK, f"{self.logs_directory} absent: the agent logs to journald/stderr")
        self._disk(config.state_dir)
        self._clock(config)
        return self.results

    @property
    def failed(self) -> bool:
        return any(r.status is Status.FAIL for r in self.results)

    def _add(self, name: str, status: Status, detail: str) -> None:
        self.results.append(CheckResult(name, status, detail))

    def _policy(self, config: AgentConfig) -> Policy | None:
        if config.policy_file is None:
            self._add("policy", Status.WARN, "development instance: the embedded development policy")
            return None
        try:
            policy = load_policy(config.policy_file)
        except ConfigError as exc:
            self._add("policy", Status.FAIL, str(exc))
            return None
        self._add("policy", Status.OK, f"{config.policy_file}: valid (digest {policy.digest[:16]})")
        return policy

    def _task_memory(self, limits: Limits) -> None:
        # A limit below what a worker holds once forked fails every task, each reported
        # to the coordinator as RESOURCE_EXHAUSTED: better found here than by them.
        configured = f"task_memory_mb = {limits.task_memory_mb}"
        startup = self.worker_startup()
        if startup is None:
            self._add("memory", Status.WARN, f"{configured}; could not start a task worker to measure its needs")
            return
        needed_mb = -(-startup // 2**20)
        if limits.task_memory_mb <= needed_mb:
            self._add(
                "memory",
                Status.FAIL,
                f"{configured} is below the {needed_mb} MiB of address space a task worker holds before any "
                "task work: every task would fail; raise it in the policy's [limits]",
            )
            return
        self._add(
            "memory",
            Status.OK,
            f"{configured}; a task worker holds {needed_mb} MiB before any task work, "
            f"{limits.task_memory_mb - needed_mb} MiB are left for a task",
        )

    def _identity(self, config: AgentConfig) -> None:
        try:
            key = load_key_file(config.identity.key_file)
        except KeyFileError as exc:
            self._add("identity", Status.FAIL, str(exc))
            return
        try:
            check_identity_pin(config, key)
        except IdentityMismatchError as exc:
            self._add("identity", Status.FAIL, str(exc))
            return
        detail = f"{config.identity.key_file}: fingerprint {key.fingerprint}"
        if config.identity.pinned_fingerprint is not None:
            self._add("identity", Status.OK, f"{detail}, pinned in {config.source}")
        elif config.development:
            self._add("identity", Status.OK, detail)
        else:
            # Still starts (installs from before pinning), but a swapped key and a re-signed audit log would pass.
            self._add(
                "identity",
                Status.WARN,
                f'{detail}, NOT pinned: run `edge-agent keys pin --config {config.source}` as root (it writes '
                f'pinned_fingerprint = "{key.fingerprint}" into [identity])',
            )

    def _tls(self, config: AgentConfig) -> None:
        try:
            tls = load_server_tls(config.tls, config.source)
        except ConfigError as exc:
            self._add("tls", Status.FAIL, str(exc))
            return
        self._expiry("tls", f"server certificate {config.tls.cert_file}", tls.not_after)
        for warning in tls.warnings:
            self._add("tls", Status.WARN, warning)
        for index, certificate in enumerate(x509.load_pem_x509_certificates(tls.client_ca_pem)):
            self._expiry("client-ca", f"{config.tls.client_ca_file} [{index}]", certificate.not_valid_after_utc)

    def _expiry(self, name: str, what: str, not_after: dt.datetime) -> None:
        days = (not_after - self.now).total_seconds() / 86400
        detail = f"{what} expires {not_after:%Y-%m-%d %H:%M} UTC ({days:.0f} days)"
        if days < self.limits.cert_fail_days:
            self._add(name, Status.FAIL, f"{detail}: renew it now")
        elif days < self.limits.cert_warn_days:
            self._add(name, Status.WARN, f"{detail}: renew it soon")
        else:
            self._add(name, Status.OK, detail)

    def _datasets(self, config: AgentConfig) -> None:
        try:
            specs = DatasetCatalog(config.datasets, DatasetRegistry(config.dataset_registry_file)).specs()
        except DatasetError as exc:
            self._add("datasets", Status.FAIL, str(exc))
            return
        if not specs:
            self._add("datasets", Status.WARN, "none declared or registered: coordinators will see nothing")
            return
        for spec in specs:
            # Reads the files' schemas: readable, of the declared format, with every declared column.
            inspection = inspect_dataset(spec)
            if inspection.available:
                self._add("dataset", Status.OK, f"{spec.id}: {spec.path} readable, {len(inspection.columns)} columns")
            else:
                self._add("dataset", Status.FAIL, f"{spec.id}: {inspection.reason}")

    def _writable(self, name: str, directory: Path) -> None:
        if name == "audit" and not directory.exists() and directory.parent.is_dir():
            # The agent creates its audit directory at the first start.
            directory = directory.parent
        if not directory.is_dir():
            self._add(
                name,
                Status.FAIL,
                f"{directory}: does not exist (systemd creates it at start, or run "
                "`systemd-tmpfiles --create edge-agent.conf`)",
            )
            return
        try:
            # A real file, as the agent would write one; os.access is wrong
            # under read-only mounts and ACLs.
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
                pass
        except OSError as exc:
            self._add(name, Status.FAIL, f"{directory}: not writable by uid {os.geteuid()}: {exc.strerror}")
            return
        self._add(name, Status.OK, f"{directory}: writable")

    def _disk(self, state_dir: Path) -> None:
        existing = next((p for p in (state_dir, *state_dir.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free
        detail = f"{free / 2**30:.1f} GiB free under {existing}"
        if free < self.limits.min_free_bytes:
            self._add("disk", Status.FAIL, f"{detail}; at least {self.limits.min_free_bytes / 2**30:.1f} GiB needed")
        else:
            self._add("disk", Status.OK, detail)

    def _clock(self, config: AgentConfig) -> None:
        if self.now < EARLIEST_PLAUSIBLE:
            self._add("clock", Status.FAIL, f"{self.now:%Y-%m-%d %H:%M} UTC is before {EARLIEST_PLAUSIBLE:%Y-%m-%d}")
            return
        not_before = _server_certificate_start(config)
        if not_before is not None and self.now < not_before:
            self._add(
                "clock",
                Status.FAIL,
                f"{self.now:%Y-%m-%d %H:%M} UTC is before the server certificate's start {not_before:%Y-%m-%d %H:%M}",
            )
            return
        synchronized = kernel_clock_synchronized()
        detail = f"{self.now:%Y-%m-%d %H:%M:%S} UTC"
        if synchronized is False:
            self._add("clock", Status.WARN, f"{detail}; the kernel reports it unsynchronized (is NTP running?)")
        else:
            state = "synchronized" if synchronized else "synchronization unknown"
            self._add("clock", Status.OK, f"{detail}; {state}")


def _server_certificate_start(config: AgentConfig) -> dt.datetime | None:
    try:
        return x509.load_pem_x509_certificate(config.tls.cert_file.read_bytes()).not_valid_before_utc
    except (OSError, ValueError):
        return None  # reported by the tls check


def kernel_clock_synchronized() -> bool | None:
    """adjtimex(2) in read-only mode (modes = 0); None where it cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # struct timex is about 200 bytes; modes (its first field) = 0 reads only.
        buffer = ctypes.create_string_buffer(512)
        state = int(libc.adjtimex(buffer))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check an installation before (re)starting the agent",
        description="Preflight checks: config and policy valid, identity key and certificates present "
        "and not near expiry, datasets readable with their declared columns, state/audit/log directories "
        "writable, free disk, clock. One line per check; exit 1 if any check fails.",
    )
    add_config_arguments(parser)
    limits = DoctorLimits()
    parser.add_argument("--cert-warn-days", type=int, default=limits.cert_warn_days, help="warn below this")
    parser.add_argument("--cert-fail-days", type=int, default=limits.cert_fail_days, help="fail below this")
    parser.add_argument(
        "--min-free-mb", type=int, default=limits.min_free_bytes // 2**20, help="free disk needed under the state dir"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    doctor = Doctor(
        limits=DoctorLimits(args.cert_warn_days, args.cert_fail_days, args.min_free_mb * 2**20),
        now=dt.datetime.now(dt.UTC),
        logs_directory=Path(os.environ.get("LOGS_DIRECTORY") or DEFAULT_LOGS_DIRECTORY),
    )
    for result in doctor.run(lambda: resolve_config(args)):
        print(result.line(), flush=True)
    if doctor.failed:
        print("edge-agent doctor: some checks FAILED; the agent would not start or not work", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.SUCCESS
