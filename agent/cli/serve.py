"""`edge-agent serve`: run the daemon in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import structlog

from agent import __version__
from agent.audit.log import AuditLog
from agent.cli.exit_codes import ExitCode
from agent.cli.settings import add_config_arguments, resolve_config
from agent.config import AgentConfig
from agent.durable import write_public
from agent.governance.development import development_policy
from agent.governance.in_force import PolicyInForce
from agent.governance.loader import load_policy
from agent.governance.model import Policy
from agent.governance.status import PID_FILENAME, PolicyStatus, now_text
from agent.identity.agent_key import AgentKey, load_key_file, load_or_generate_key_file
from agent.identity.development_pki import ensure_development_pki
from agent.observability.logging import configure_logging
from agent.server.assembly import assemble_service
from agent.server.daemon import AgentDaemon, ListenError
from agent.server.tls import ServerTlsMaterial, load_server_tls


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the agent in the foreground",
        description="Run the agent's gRPC server until SIGTERM or SIGINT. Without a config file, "
        "starts a development instance with a generated development PKI.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--listen", default=None, help="HOST:PORT to listen on, overriding the config (port 0: any free port)"
    )
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port to this file once serving")
    parser.set_defaults(handler=run)


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


def _identity_key(config: AgentConfig) -> tuple[AgentKey, bool]:
    if config.development:
        return load_or_generate_key_file(config.identity.key_file)
    # Production never creates keys on its own: a missing key is an
    # installation step that was skipped, not something to paper over.
    return load_key_file(config.identity.key_file), False


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
        self, policy: PolicyInForce, audit: AuditLog, state_dir: Path, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self._policy = policy
        self._audit = audit
        self._state_dir = state_dir
        self._log = log
        self._lock = threading.Lock()

    def announce(self, policy: Policy) -> None:
        self._audit.append("policy.loaded", digest=policy.digest, source=policy.source)
        PolicyStatus(policy.digest, policy.source, now_text()).write(self._state_dir)
        self._log.info("policy.loaded", digest=policy.digest, source=policy.source)

    def reload(self) -> None:
        with self._lock:
            result = self._policy.reload()
            if result.applied:
                self.announce(result.policy)
                return
            # The old policy stays in force; say so everywhere someone looks.
            self._audit.append(
                "policy.rejected", error=result.error, digest_in_force=result.policy.digest
            )
            self._log.error("policy.rejected", error=result.error, digest_in_force=result.policy.digest)
            previous = PolicyStatus.read(self._state_dir)
            PolicyStatus(
                result.policy.digest,
                result.policy.source,
                previous.loaded_at if previous else now_text(),
                last_error=result.error,
                last_error_at=now_text(),
            ).write(self._state_dir)


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args, listen=args.listen)
    if args.listen and not config.development:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, listen=args.listen))
    logger = configure_logging(config.logging.level, config.logging.format)
    created_pki = False
    if config.development:
        _, created_pki = ensure_development_pki(config.tls.client_ca_file.parent)
    key, created_key = _identity_key(config)
    tls = load_server_tls(config.tls, config.source)
    policy = _policy(config)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if config.development:
        _announce_development(config, created_pki, created_key)

    log = logger.bind(agent_id=config.agent_id)
    audit = AuditLog.open(config.audit.directory, key, checkpoint_every=config.audit.checkpoint_every)
    try:
        return _serve(args, config, key=key, tls=tls, policy=policy, audit=audit, log=log)
    finally:
        audit.close()


def _serve(
    args: argparse.Namespace,
    config: AgentConfig,
    *,
    key: AgentKey,
    tls: ServerTlsMaterial,
    policy: PolicyInForce,
    audit: AuditLog,
    log: structlog.typing.FilteringBoundLogger,
) -> int:
    service = assemble_service(config, key=key, policy=policy, audit=audit, logger=log)
    daemon = AgentDaemon(config.server, tls, service, log)
    reloader = _PolicyReloader(policy, audit, config.state_dir, log)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal.received", signal=signal.Signals(signum).name)
        daemon.request_stop()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        log.info("signal.received", signal="SIGHUP", action="reload policy")
        threading.Thread(target=reloader.reload, name="policy-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)

    try:
        state = daemon.start()
    except ListenError as exc:
        log.error("server.listen_failed", error=str(exc))
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    pid_file = config.state_dir / PID_FILENAME
    write_public(pid_file, f"{os.getpid()}\n".encode())
    audit.append(
        "agent.started",
        version=__version__,
        agent_id=config.agent_id,
        fingerprint=key.fingerprint,
        port=state.port,
        config=str(config.source) if config.source else "development defaults",
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
    if args.port_file is not None:
        write_public(args.port_file, f"{state.port}\n".encode())
    try:
        daemon.serve_until_stopped()
    finally:
        pid_file.unlink(missing_ok=True)
    audit.append("agent.stopped", agent_id=config.agent_id)
    log.info("agent.exited", code=0)
    return ExitCode.SUCCESS
