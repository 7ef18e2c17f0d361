"""Builds the gRPC server from its parts and runs it: listen, serve, drain, stop."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.config import ServerConfig
from agent.server.interceptors import RpcGuard
from agent.server.service import AgentService
from agent.server.tls import ServerTlsMaterial

AGENT_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Agent"].full_name


class ListenError(Exception):
    """The server could not bind its listening address."""


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(config.min_client_ping_interval_seconds * 1000)),
        # Without this, a second agent started on the same port would share
        # it silently (SO_REUSEPORT) instead of failing to start.
        ("grpc.so_reuseport", 0),
    ]


@dataclass(frozen=True)
class ServingState:
    port: int


class AgentDaemon:
    """The running agent. `start()` binds and serves; `stop()` drains and ends.

    `request_stop()` only sets a flag, so it is safe from a signal handler;
    the thread in `serve_until_stopped()` does the actual draining.
    """

    def __init__(
        self,
        config: ServerConfig,
        tls: ServerTlsMaterial,
        service: AgentService,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._config = config
        self._tls = tls
        self._service = service
        self._logger = logger
        self._stop_requested = threading.Event()
        self._force = threading.Event()
        self._health = health.HealthServicer(experimental_non_blocking=True)
        self._server: grpc.Server | None = None

    def start(self) -> ServingState:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._config.max_workers, thread_name_prefix="rpc"),
            interceptors=[RpcGuard(self._logger)],
            options=server_options(self._config),
            maximum_concurrent_rpcs=self._config.max_workers * 4,
        )
        pb_grpc.add_AgentServicer_to_server(self._service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (AGENT_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        credentials = grpc.ssl_server_credentials(
            [(self._tls.private_key_pem, self._tls.cert_chain_pem)],
            root_certificates=self._tls.client_ca_pem,
            require_client_auth=True,
        )
        try:
            port = server.add_secure_port(self._config.listen, credentials)
        except RuntimeError as exc:  # grpcio raises on bind failure in recent versions
            raise ListenError(f"cannot listen on {self._config.listen}: {exc}") from None
        if port == 0:
            raise ListenError(f"cannot listen on {self._config.listen}: address in use or not available")
        server.start()
        self._server = server
        for name in ("", AGENT_SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._logger.info("server.listening", listen=self._config.listen, port=port)
        return ServingState(port=port)

    def request_stop(self) -> None:
        """Asks for a graceful stop; a second request cuts the grace period short."""
        if self._stop_requested.is_set():
            self._force.set()
        self._stop_requested.set()

    def serve_until_stopped(self) -> None:
        self._stop_requested.wait()
        self.stop()

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        grace = self._config.grace_seconds
        self._logger.info("server.stopping", grace_seconds=grace)
        # Load balancers and coordinators watching health stop sending work first.
        self._health.enter_graceful_shutdown()
        done = server.stop(grace)
        while not done.wait(0.2):
            if self._force.is_set():
                self._logger.warning("server.stop_forced")
                server.stop(0).wait()
                break
        self._logger.info("server.stopped")
