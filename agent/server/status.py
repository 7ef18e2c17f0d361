"""Where a refusal becomes a gRPC status: the only mapping from agent.refusal to grpc."""

from __future__ import annotations

from typing import NoReturn, assert_never

import grpc

from agent.refusal import Refusal


def status_code(refusal: Refusal) -> grpc.StatusCode:
    match refusal:
        case Refusal.INVALID:
            return grpc.StatusCode.INVALID_ARGUMENT
        case Refusal.FORBIDDEN:
            return grpc.StatusCode.PERMISSION_DENIED
        case Refusal.NOT_FOUND:
            return grpc.StatusCode.NOT_FOUND
        case Refusal.PRECONDITION:
            return grpc.StatusCode.FAILED_PRECONDITION
        case Refusal.EXHAUSTED:
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        case Refusal.UNAVAILABLE:
            return grpc.StatusCode.UNAVAILABLE
        case _:
            assert_never(refusal)


def refuse(context: grpc.ServicerContext, refusal: Refusal, message: str) -> NoReturn:
    """Ends the call with the refusal's status and a message the caller can act on."""
    context.abort(status_code(refusal), message)
