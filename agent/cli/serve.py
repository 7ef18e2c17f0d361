"""`edge-agent serve`: run the daemon in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import NoReturn

import structlog

from agent import __version__
from agent.audit.events import AgentStarted, AgentStopped, PolicyLoaded, PolicyRejected
from agent.audit.log import AuditLog
from agent.audit.record import AuditRecord
from agent.cli.exit_codes import ExitCode
from agent.cli.settings import (
    IdentityMismatchError,
    UsageError,
    add_config_arguments,
    check_identity_pin,
    identity_key,
    resolve_config,
)
from agent.config import AgentConfig
from agent.config.model import ListenAddressError, parse_listen_address
from agent.durable import write_public
from agent.governance.development import development_policy
from agent.governance.in_force import PolicyInForce
from agent.governance.loader import load_policy
from agent.governance.model import Policy
from agent.governance.status import PID_FILENAME, PolicyStatus, now_text
from agent.identity.agent_key import AgentKey
from agent.identity.development_pki import ensure_development_pki
from agent.observability.logging import configure_logging
from agent.observability.metrics import AgentMetrics, MetricsListenError, serve_metrics
from agent.privacy.accounting import make_accountant
from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger
from agent.server.daemon import AgentDaemon, ListenError
from agent.server.systemd_notify import NotifySocketError, SystemdNotifier, WatchdogPacer
from agent.server.tls import ServerTlsMaterial, load_server_tls
from agent.state_lock import lock_state_directory


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the agent in the foreground",
        description="Run the agent's gRPC server until SIGTERM or SIGINT. Without a config file, "
        "starts a development instance with a generated development PKI.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--listen",
        default=None,
        type=_listen_argument,
        help="HOST:PORT or [IPV6]:PORT to listen on, overriding the config (port 0: any free port)",
    )
    parser.add_argument(
        "--port-file",
        type=Path,
        default=None,
        help="write the bound port to this file once serving; removed again on exit",
    )
    parser.set_defaults(handler=run)


# After the server has stopped and the audit log is closed, the process exits
# even if a handler thread ignored its cancellation; this much time on top of
# server.grace_seconds is allowed for gRPC to cancel and for clean-up.
STOP_MARGIN_SECONDS = 2.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _listen_argument(value: str) -> str:
    # argparse turns this into "argument --listen: ..." and exit code 2.
    try:
        return parse_listen_address(value)
    except ListenAddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _prepare_port_file(path: Path) -> None:
    """Checks --port-file before anything starts and removes a stale one.

    A script polling the file must never read the port of an earlier run,
    and a path that cannot be written must fail now (exit 2), not after the
    server is already listening.
    """
    if path.is_dir():
        raise UsageError(f"--port-file {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"--port-file {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--port-file {path}: directory {parent} is not writable")
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise UsageError(f"--port-file {path}: cannot remove the old file: {exc.strerror}") from None


class _SignalInbox:
    """SIGTERM, SIGINT and SIGHUP delivered to the main thread as data.

    The Python-level handler does nothing at all: the interpreter's C handler
    writes the signal number to a socket (signal.set_wakeup_fd) and the main
    loop reads it. Logging or taking any lock inside a handler can deadlock
    when the signal interrupts the main thread while it holds that lock (a
    second Ctrl-C during a log write, for example). Leaving the inbox means the
    agent is stopping: the signals are then ignored, not restored to their defaults.
    """

    def __enter__(self) -> _SignalInbox:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in _SIGNALS:
            signal.signal(signum, _record_only)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # The agent is stopping once the inbox closes: stop signals are ignored from here on
        # (see _ignore_stop_signals), not handed back to their defaults even for an instant.
        _ignore_stop_signals()
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()

    def wait(self, timeout: float | None) -> list[signal.Signals]:
        """Signals received so far, waiting up to `timeout` seconds (None: forever) for the first."""
        readable, _, _ = select.select([self._reader], [], [], timeout)
        if not readable:
            return []
        wanted = {int(s) for s in _SIGNALS}
        return [signal.Signals(b) for b in self._reader.recv(256) if b in wanted]


def _record_only(signum: int, frame: FrameType | None) -> None:
    """Installed so the default action (exit, KeyboardInterrupt) does not happen; see _SignalInbox."""


def _ignore_stop_signals() -> None:
    """The agent is past its stop: a repeated SIGTERM or Ctrl-C (systemd and a shell may both send
    one) must not kill it between an audit entry and its signed head, which would leave the log
    ending in an unsigned entry. SIGKILL still ends it at once."""
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _exit_now(code: int) -> NoReturn:
    """Ends the process without waiting for gRPC handler threads.

    Python joins thread-pool threads at exit, so one handler that ignores its
    cancellation would keep the agent alive past server.grace_seconds. By now
    the server has stopped and the audit log is closed; only streams need
    flushing.
    """
    for stream in (sys.stdout, sys.stderr):
        # A closed stream or broken pipe has nothing left to save.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _announce_development(config: AgentConfig, created_pki: bool, created_key: bool) -> None:
    pki = config.tls.client_ca_file.parent
    lines = [
        "edge-agent: DEVELOPMENT instance (no config file): not for patient data.",
        f"  state directory:        {config.state_dir}",
        f"  development PKI:        {pki}{' (created now)' if created_pki else ''}",
        f"  identity key:           {config.identity.key_file}{' (created now)' if created_key else ''}",
        "  coordinator credentials:",
        f"    CA certificate:       {pki / 'ca.crt'}",
        f"    client certificate:   {pki / 'coordinator.crt'}",
        f"    client key:           {pki / 'coordinator.key'}",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _policy(config: AgentConfig) -> PolicyInForce:
    policy_file = config.policy_file
    if policy_file is None:
        return PolicyInForce(development_policy())

    def load() -> Policy:
        return load_policy(policy_file)

    return PolicyInForce(load(), load)


class _PolicyReloader:
    """Reloads the policy on SIGHUP, off the signal handler, one reload at a time."""

    def __init__(
        self,
        policy: PolicyInForce,
        audit: AuditLog,
        state_dir: Path,
        log: structlog.typing.FilteringBoundLogger,
        notifier: SystemdNotifier,
    ) -> None:
        self._policy = policy
        self._audit = audit
        self._state_dir = state_dir
        self._log = log
        self._notifier = notifier
        self._lock = threading.Lock()

    def announce(self, policy: Policy) -> None:
        self._audit.record(PolicyLoaded(policy_digest=policy.digest, source=policy.source))
        PolicyStatus(policy.digest, policy.source, now_text()).write(self._state_dir)
        self._log.info("policy.loaded", digest=policy.digest, source=policy.source)
        self._notifier.status(f"serving; policy {policy.digest[:16]} loaded at {now_text()}")

    def reload(self) -> None:
        with self._lock:
            result = self._policy.reload()
            if result.applied:
                self.announce(result.policy)
                return
            # The old policy stays in force; say so everywhere someone looks.
            self._audit.record(PolicyRejected(reason=result.error, policy_digest=result.policy.digest))
            self._log.error("policy.rejected", error=result.error, digest_in_force=result.policy.digest)
            self._notifier.status(
                f"serving; new policy REJECTED, {result.policy.digest[:16]} stays in force: {result.error}"
            )
            previous = PolicyStatus.read(self._state_dir)
            PolicyStatus(
                result.policy.digest,
                result.policy.source,
                previous.loaded_at if previous else now_text(),
                last_error=result.error,
                last_error_at=now_text(),
            ).write(self._state_dir)


def run(args: argparse.Namespace) -> int:
    if args.port_file is not None:
        _prepare_port_file(args.port_file)
    # Read before any worker process is spawned, and removed from the
    # environment, so that only this process speaks to systemd.
    try:
        notifier = SystemdNotifier.from_environment(os.environ)
    except NotifySocketError as exc:
        raise UsageError(str(exc)) from None
    config = resolve_config(args, listen=args.listen)
    if args.listen and not config.development:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, listen=args.listen))
    logger = configure_logging(config.logging.level, config.logging.format)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Before anything is read or written: a second daemon on this directory stops here
    # (StateDirectoryBusyError, exit 1). Held until the process exits.
    lock_state_directory(config.state_dir, "serve")
    created_pki = False
    if config.development:
        _, created_pki = ensure_development_pki(config.tls.client_ca_file.parent)
    key, created_key = identity_key(config)
    try:
        check_identity_pin(config, key)
    except IdentityMismatchError as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return ExitCode.IDENTITY_MISMATCH
    tls = load_server_tls(config.tls, config.source)
    policy = _policy(config)
    if config.development:
        _announce_development(config, created_pki, created_key)

    log = logger.bind(agent_id=config.agent_id)
    if config.identity.pinned_fingerprint is None and not config.development:
        # Installs from before pinning keep working; the journal says what to add.
        log.warning(
            "identity.not_pinned",
            fingerprint=key.fingerprint,
            config=str(config.source),
            fix=f'add pinned_fingerprint = "{key.fingerprint}" to [identity] in {config.source}',
        )
    for warning in tls.warnings:
        log.warning("tls.key_file_permissions", problem=warning)
    # Every audit entry also goes to the log (journald), for operators who watch there.
    audit_echo = log.bind(audit=True)
    metrics = AgentMetrics()

    def observe(record: AuditRecord) -> None:
        audit_echo.info(record.kind, **record.log_fields())
        metrics.observe_audit(record)

    audit = AuditLog.open(
        config.audit.directory, key, checkpoint_every=config.audit.checkpoint_every, observer=observe
    )
    try:
        code = _serve(
            args, config, key=key, tls=tls, policy=policy, audit=audit, log=log, notifier=notifier, metrics=metrics
        )
    finally:
        _ignore_stop_signals()
        audit.close()
    _exit_now(code)


def _serve(
    args: argparse.Namespace,
    config: AgentConfig,
    *,
    key: AgentKey,
    tls: ServerTlsMaterial,
    policy: PolicyInForce,
    audit: AuditLog,
    log: structlog.typing.FilteringBoundLogger,
    notifier: SystemdNotifier,
    metrics: AgentMetrics,
) -> int:
    # Imported here: the service graph pulls in dp-accounting, onnxruntime and scipy
    # (about 1.3 s), which every other edge-agent command would otherwise pay for.
    from agent.server.assembly import assemble_service  # noqa: PLC0415 (deliberately lazy)

    service = assemble_service(config, key=key, policy=policy, audit=audit, logger=log, metrics=metrics)
    daemon = AgentDaemon(config.server, tls, service, log, rpc_observer=metrics.observe_rpc)
    # A reader of the daemon's ledger file, as `edge-agent budget show` is.
    metrics.watch_budgets(PrivacyLedger(config.state_dir / LEDGER_FILENAME, make_accountant("pld")).groups)
    reloader = _PolicyReloader(policy, audit, config.state_dir, log, notifier)

    with _SignalInbox() as inbox:
        try:
            metrics_listener = serve_metrics(config.metrics.listen, metrics.registry) if config.metrics.listen else None
            state = daemon.start()
        except (ListenError, MetricsListenError) as exc:
            log.error("server.listen_failed", error=str(exc))
            print(f"edge-agent: error: {exc}", file=sys.stderr)
            return ExitCode.FAILURE
        if metrics_listener is not None:
            log.info("metrics.listening", listen=config.metrics.listen, port=metrics_listener.port)
        pid_file = config.state_dir / PID_FILENAME
        port_file: Path | None = args.port_file
        try:
            write_public(pid_file, f"{os.getpid()}\n".encode())
            audit.record(
                AgentStarted(
                    version=__version__,
                    agent_id=config.agent_id,
                    fingerprint=key.fingerprint,
                    port=state.port,
                    config=str(config.source) if config.source else "development defaults",
                )
            )
            reloader.announce(policy.current())
            log.info(
                "agent.started",
                version=__version__,
                fingerprint=key.fingerprint,
                port=state.port,
                datasets=len(service.catalog.specs()),
                config=str(config.source) if config.source else "development defaults",
                tls_certificate_expires=tls.not_after.isoformat(),
            )
            if port_file is not None:
                _write_port_file(port_file, state.port, daemon)
            # READY only now: the port is bound and the policy is in force.
            notifier.ready(f"serving on port {state.port}; policy {policy.current().digest[:16]}")
            _serve_until_signalled(daemon, inbox, reloader, config.server.grace_seconds, log, notifier=notifier)
        finally:
            daemon.finish()
            if metrics_listener is not None:
                metrics_listener.close()
            pid_file.unlink(missing_ok=True)
            if port_file is not None:
                port_file.unlink(missing_ok=True)
    audit.record(AgentStopped(agent_id=config.agent_id))
    log.info("agent.exited", code=0)
    return ExitCode.SUCCESS


def _write_port_file(path: Path, port: int, daemon: AgentDaemon) -> None:
    try:
        write_public(path, f"{port}\n".encode())
    except OSError as exc:
        # write_public's own error names its temp file; the user gave `path`.
        daemon.stop()
        raise UsageError(f"--port-file {path}: cannot write: {exc.strerror or exc}") from None


def _serve_until_signalled(
    daemon: AgentDaemon,
    inbox: _SignalInbox,
    reloader: _PolicyReloader,
    grace_seconds: float,
    log: structlog.typing.FilteringBoundLogger,
    *,
    notifier: SystemdNotifier,
) -> None:
    """The main thread's loop: act on signals, drain on the first stop signal, force on the second.

    It is also the one place that pings systemd's watchdog: a hung loop or a
    frozen process stops pinging and systemd restarts the agent.
    """
    stopped: threading.Event | None = None
    stop_began = 0.0
    forced_at: float | None = None
    pacer = WatchdogPacer(notifier, time.monotonic())
    while stopped is None or not stopped.is_set():
        pacer.tick(time.monotonic(), daemon.serving)
        for received in inbox.wait(pacer.timeout(time.monotonic(), None if stopped is None else 0.1)):
            if received is signal.SIGHUP:
                log.info("signal.received", signal=received.name, action="reload policy")
                threading.Thread(target=reloader.reload, name="policy-reload", daemon=True).start()
            elif stopped is None:
                log.info("signal.received", signal=received.name, action="drain")
                notifier.stopping(f"draining in-flight calls for up to {grace_seconds:g} s")
                stop_began = time.monotonic()
                stopped = daemon.begin_stop()
            elif forced_at is None:
                log.info("signal.received", signal=received.name, action="stop now")
                forced_at = time.monotonic()
                stopped = daemon.force_stop()
        if stopped is None:
            continue
        now = time.monotonic()
        if forced_at is None and now - stop_began > grace_seconds + STOP_MARGIN_SECONDS / 2:
            # gRPC cancels leftovers at the end of the grace period; if its
            # stop has still not completed, do not wait any longer.
            forced_at = now
            stopped = daemon.force_stop()
        elif forced_at is not None and now - forced_at > STOP_MARGIN_SECONDS / 2:
            log.warning("server.stop_incomplete", reason="gRPC did not confirm the stop; exiting anyway")
            return
