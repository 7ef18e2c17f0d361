"""Builds the gRPC server from its parts and runs it: listen, serve, drain, stop."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.api.chunk_codec import add_agent_service
from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.config import ServerConfig
from agent.server.interceptors import RpcGuard, RpcObserver
from agent.server.tls import ServerTlsMaterial


@runtime_checkable
class _Closable(Protocol):
    def close(self) -> None: ...


AGENT_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Agent"].full_name

SendResponse = Callable[[Any], None]


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


def max_concurrent_rpcs(config: ServerConfig) -> int:
    return config.max_workers * 4


def max_health_watches(config: ServerConfig) -> int:
    # Open Watch streams hold no thread but do count against gRPC's
    # concurrency limit; capped at a quarter of it so watchers can never
    # crowd out real calls.
    return max(1, max_concurrent_rpcs(config) // 4)


class _WatchSender:
    """Delivers Watch responses from one thread, outside the health servicer's lock.

    gRPC's send on a stream waits until the previous message has left, and
    that completion is processed by the server's event thread. The stock
    servicer sends while holding its lock, and the same event thread takes
    that lock when a Watch closes: sending from there can deadlock the whole
    server. Queued here, a send never happens under that lock. One thread
    serves every watch (responses are tiny and rare), in order.
    """

    def __init__(self) -> None:
        # None stops the thread.
        self._queue: queue.SimpleQueue[tuple[SendResponse, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="health-watch-sender", daemon=True)
        self._thread.start()

    def submit(self, send: SendResponse, response: Any) -> None:
        self._queue.put((send, response))

    def close(self) -> None:
        """Stops the thread after everything queued so far has been sent."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            send, response = item
            # A send on a call that has meanwhile ended is a no-op in gRPC;
            # anything else must not end the thread serving every watch.
            with contextlib.suppress(Exception):
                send(response)


class _OneWatch:
    """The response callback of one Watch stream; ends it at most once."""

    def __init__(self, send: SendResponse, sender: _WatchSender) -> None:
        self._send = send
        self._sender = sender
        self._lock = threading.Lock()
        self._ended = False

    def __call__(self, response: Any) -> None:
        with self._lock:
            if self._ended:
                return
            if response is None:  # None ends the stream (gRPC's non-blocking protocol)
                self._ended = True
            self._sender.submit(self._send, response)


class DrainingHealthServicer(health.HealthServicer):  # type: ignore[misc]  # untyped library base
    """The standard health service, plus: bounded Watch streams that end on shutdown.

    The stock servicer keeps Watch streams open until the server stops, so
    each one would hold shutdown for the whole grace period.
    """

    def __init__(self, max_watches: int) -> None:
        super().__init__(experimental_non_blocking=True)
        self._max_watches = max_watches
        self._watch_lock = threading.Lock()
        self._watches: set[_OneWatch] = set()
        self._closing = False
        self._sender = _WatchSender()

    def Watch(  # noqa: N802 (gRPC method name)
        self, request: Any, context: grpc.ServicerContext, send_response_callback: SendResponse | None = None
    ) -> Any:
        if send_response_callback is None:
            # Only if someone wrapped the handler and made it blocking.
            return super().Watch(request, context)
        watch = _OneWatch(send_response_callback, self._sender)
        with self._watch_lock:
            if self._closing:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the agent is shutting down")
            if len(self._watches) >= self._max_watches:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many open health watches")
            self._watches.add(watch)

        def forget() -> None:
            with self._watch_lock:
                self._watches.discard(watch)

        context.add_callback(forget)
        return super().Watch(request, context, watch)

    def end_watches(self) -> None:
        """Ends every open Watch stream with OK, after it has been sent NOT_SERVING."""
        with self._watch_lock:
            self._closing = True
            watches = list(self._watches)
            self._watches.clear()
        for watch in watches:
            watch(None)
        self._sender.close()


@dataclass(frozen=True)
class ServingState:
    port: int


class AgentDaemon:
    """The running agent. `start()` binds and serves; `begin_stop()` drains; `stop()` drains and waits.

    No method here is meant for a signal handler: `serve` receives signals on
    its main thread and calls these from there.
    """

    def __init__(
        self,
        config: ServerConfig,
        tls: ServerTlsMaterial,
        service: pb_grpc.AgentServicer,
        logger: structlog.typing.FilteringBoundLogger,
        rpc_observer: RpcObserver | None = None,
    ) -> None:
        self._config = config
        self._rpc_observer = rpc_observer
        self._tls = tls
        self._service = service
        self._logger = logger
        self._health = DrainingHealthServicer(max_health_watches(config))
        self._server: grpc.Server | None = None
        self._stopped: threading.Event | None = None

    def start(self) -> ServingState:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._config.max_workers, thread_name_prefix="rpc"),
            interceptors=[RpcGuard(self._logger, self._rpc_observer)],
            options=server_options(self._config),
            maximum_concurrent_rpcs=max_concurrent_rpcs(self._config),
        )
        add_agent_service(self._service, server)
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

    @property
    def serving(self) -> bool:
        """True from a successful start() until finish(); the watchdog pings only while it is."""
        return self._server is not None

    def begin_stop(self) -> threading.Event:
        """Starts the graceful stop and returns at once; the event is set once the server has stopped.

        Health turns NOT_SERVING and open Watch streams receive that and then
        end, the listener closes, in-flight calls get `server.grace_seconds`,
        then gRPC cancels what is left. Calling it again returns the same event.
        """
        if self._stopped is not None:
            return self._stopped
        server = self._server
        if server is None:
            done = threading.Event()
            done.set()
            return done
        grace = self._config.grace_seconds
        self._logger.info("server.stopping", grace_seconds=grace)
        # Watchers (load balancers, coordinators) learn first, then their
        # streams end so that they do not hold the drain.
        self._health.enter_graceful_shutdown()
        self._health.end_watches()
        self._stopped = server.stop(grace)
        return self._stopped

    def force_stop(self) -> threading.Event:
        """Cancels every call now (a second signal); returns when gRPC has stopped."""
        server = self._server
        if server is None:
            done = threading.Event()
            done.set()
            return done
        self._logger.warning("server.stop_forced")
        self._health.enter_graceful_shutdown()
        self._health.end_watches()
        done = server.stop(0)
        self._stopped = done
        return done

    def stop(self) -> None:
        """Graceful stop, waiting for it (tests and embedders; `serve` uses begin_stop)."""
        if self._server is None:
            return
        self.begin_stop().wait()
        self.finish()

    def finish(self) -> None:
        """Records the end of a stop begun with begin_stop(); stops at once if none was begun (an error)."""
        server = self._server
        if server is None:
            return
        if self._stopped is None:
            server.stop(0).wait(self._config.grace_seconds)
        self._server = None
        if isinstance(self._service, _Closable):
            self._service.close()
        self._logger.info("server.stopped")
