"""One interceptor around every RPC: who called, how it ended, and no leaked internals.

gRPC's default for an exception escaping a handler is UNKNOWN with the
exception's text, which can carry file paths or data values to the remote
caller. Here such an exception becomes INTERNAL with a reference id; the
details go only to the agent's own log.

A call the client cancelled, or whose deadline passed, is not a bug: the
handler typically fails reading the request stream (grpc.RpcError) or finds
the context inactive. Those are logged as the caller's status at info level,
without a traceback, and never turned into INTERNAL.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import structlog

from agent.server.peer import caller_identity

Behavior = Callable[[Any, grpc.ServicerContext], Any]
# Told of every finished call: method, status code name, seconds (metrics).
RpcObserver = Callable[[str, str, float], None]

# Handlers passed through untouched. The health service carries no data and
# its Watch is a non-blocking handler: wrapping it in a generator would pin a
# worker thread per open stream (a handful of watchers exhaust the pool) and
# make every stream hold shutdown for the whole grace period.
PASS_THROUGH_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/",)


def _status_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    # ServicerContext.code() exists at run time (grpcio >= 1.38) but is
    # missing from the type stubs.
    code: grpc.StatusCode | None = getattr(context, "code")()  # noqa: B009
    return code


def _status_already_set(context: grpc.ServicerContext) -> bool:
    return _status_code(context) is not None


def _ended_by_caller(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """CANCELLED or DEADLINE_EXCEEDED if the call is over from the caller's side, else None.

    Best effort: a client's own deadline timer often cancels the call a moment
    before the agent's copy of the deadline expires, which reads as CANCELLED.
    """
    if context.is_active():
        return None
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _is_non_blocking(handler: grpc.RpcMethodHandler[Any, Any]) -> bool:
    behaviors = (handler.unary_unary, handler.unary_stream, handler.stream_unary, handler.stream_stream)
    return any(getattr(b, "experimental_non_blocking", False) for b in behaviors if b is not None)


class RpcGuard(grpc.ServerInterceptor):
    def __init__(self, logger: structlog.typing.FilteringBoundLogger, observer: RpcObserver | None = None) -> None:
        self._logger = logger
        self._observer = observer

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        # A non-blocking handler (one that answers through a callback and
        # returns at once) cannot be wrapped without turning it blocking.
        if method.startswith(PASS_THROUGH_PREFIXES) or _is_non_blocking(handler):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._guard_unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is None:
            return handler
        return grpc.stream_stream_rpc_method_handler(
            self._guard_stream(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _admit(self, method: str, context: grpc.ServicerContext) -> str:
        identity = caller_identity(context)
        if identity is None:
            # With require_client_auth the chain is verified, so this is a
            # certificate whose identity is missing or ambiguous (see
            # agent.identity.peer), or a future listener without client auth.
            self._logger.warning("rpc.refused", method=method, peer=context.peer(), reason="no client identity")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate with an identity is required")
        return str(identity)

    def _fail(self, method: str, identity: str, context: grpc.ServicerContext, exc: Exception) -> None:
        """Handles an exception that escaped the handler; returns only if the caller ended the call."""
        if _status_already_set(context):  # context.abort() was called
            raise exc
        if isinstance(exc, grpc.RpcError) or _ended_by_caller(context) is not None:
            # The caller cancelled or its deadline passed (the request
            # iterator raises RpcError then). Re-raising lets gRPC drop the
            # call quietly; _log_end records the status.
            raise exc
        reference = secrets.token_hex(6)
        self._logger.error("rpc.internal_error", method=method, caller=identity, reference=reference, exc_info=exc)
        context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error in the agent (reference {reference}); "
            "the hospital's operators can find it in the agent log",
        )

    def _log_end(self, method: str, identity: str, context: grpc.ServicerContext, started: float) -> None:
        code = _status_code(context) or _ended_by_caller(context) or grpc.StatusCode.OK
        seconds = time.perf_counter() - started
        self._logger.info(
            "rpc",
            method=method,
            caller=identity,
            peer=context.peer(),
            status=code.name,
            duration_ms=round(seconds * 1000, 3),
        )
        if self._observer is not None:
            self._observer(method, code.name, seconds)

    def _guard_unary(self, method: str, behavior: Behavior) -> Behavior:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            identity = "-"
            try:
                identity = self._admit(method, context)
                return behavior(request, context)
            except Exception as exc:
                self._fail(method, identity, context, exc)
            finally:
                self._log_end(method, identity, context, started)

        return guarded

    def _guard_stream(self, method: str, behavior: Behavior) -> Behavior:
        def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            identity = "-"
            try:
                identity = self._admit(method, context)
                yield from behavior(request, context)
            except Exception as exc:
                self._fail(method, identity, context, exc)
            finally:
                self._log_end(method, identity, context, started)

        return guarded
