"""Stand-ins for a remote agent in coordinator tests: a real gRPC server with mutual TLS whose RunTask is scripted.

Only the remote peer is scripted (to stall, trickle or echo); the coordinator
side under test is the product's client code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc

from agent.api.chunk_codec import add_agent_service
from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from tests.conftest import Pki

MIB = 1024 * 1024
Script = Callable[[Iterator[pb.RunTaskRequest], grpc.ServicerContext], Iterator[pb.TaskEvent]]


class ScriptedAgent(pb_grpc.AgentServicer):
    def __init__(self, script: Script) -> None:
        self.script = script
        # Set when the call ended without the script finishing it (the coordinator cancelled).
        self.cut_off = threading.Event()

    def RunTask(
        self, request_iterator: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TaskEvent]:
        yield from self.script(request_iterator, context)

    def hold(self, context: grpc.ServicerContext, seconds: float = 60.0) -> None:
        """Sends nothing and reads nothing until the caller gives up (or ``seconds`` pass)."""
        ended = threading.Event()
        context.add_callback(ended.set)
        if ended.wait(timeout=seconds) and not context.is_active():
            self.cut_off.set()


@contextmanager
def serving(servicer: pb_grpc.AgentServicer, pki: Pki, max_message_bytes: int = 16 * MIB) -> Iterator[str]:
    """``servicer`` on a loopback port with the test PKI's agent certificate; yields the address."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=4),
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ],
    )
    add_agent_service(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(pki.path("agent.key").read_bytes(), pki.path("agent.crt").read_bytes())],
        root_certificates=pki.path("ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
