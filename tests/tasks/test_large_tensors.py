"""A 300 MB tensor through both chunked paths of RunTask, byte for byte.

No product RPC echoes parameters (results are noisy), so the peer here is an
echo built from the agent's own transport code: the coordinator's run_task
sends the tensor (declared with its sha256) in chunks, the agent's
receive_tensors assembles it and verifies the sha256 on arrival, and the
agent's result_events sends the same array back in chunks into the
coordinator's TensorAssembler.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
import numpy as np

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.server.task_endpoints import receive_tensors, result_events, tensor_decl
from agent.tasks.runner import TaskOutcome
from agent.tasks.tensors import MAX_CHUNK_BYTES, TensorAssembler, TensorDecl
from edge_sponsor.coordinator.client import AgentClient
from tests.conftest import Pki
from tests.coordinator.peers import ScriptedAgent, serving

SIZE = 300 * 1024 * 1024


def test_a_300_mb_tensor_round_trips_byte_exact(pki: Pki) -> None:
    seen: dict[str, object] = {}

    def echo(requests: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext) -> Iterator[pb.TaskEvent]:
        spec = next(requests).spec
        declared = [tensor_decl(h, f"spec.parameters[{i}]") for i, h in enumerate(spec.parameters)]
        seen["sha256"] = [d.sha256 for d in declared]
        yield pb.TaskEvent(accepted=pb.TaskAccepted(task_id="echo", parameters_needed=range(len(declared))))
        sizes: list[int] = []

        def count() -> None:
            sizes.append(0)

        # finish() inside receive_tensors checks every tensor against its declared sha256.
        arrays = receive_tensors(TensorAssembler(declared), len(declared), requests, count)
        seen["chunks"] = len(sizes)
        yield from result_events("echo", TaskOutcome(arrays, {}, 0.0, 0.0, 0.0))

    # Random bits, NaN patterns included: any conversion on the way would change them.
    original = np.frombuffer(np.random.default_rng(7).bytes(SIZE), dtype=np.float32)
    with serving(ScriptedAgent(echo), pki) as address, AgentClient(
        address, pki.credentials(), server_name="localhost"
    ) as client:
        run = client.run_task(
            pb.TaskSpec(run_id="big"),
            [("big", original)],
            stall_seconds=30,
            expected=[TensorDecl("big", "float32", original.shape)],
        )
    echoed = run.tensors["big"]
    assert seen["sha256"] == [hashlib.sha256(original.data).digest()]
    assert seen["chunks"] == SIZE // MAX_CHUNK_BYTES
    assert echoed.dtype == np.float32 and echoed.shape == original.shape
    assert np.array_equal(echoed.view(np.uint8), original.view(np.uint8))
