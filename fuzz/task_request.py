"""atheris harness: decoding and checking RunTask requests from arbitrary bytes.

The path every RunTask message takes before a task exists: protobuf decoding,
the spec check (TaskSpecError naming the field), tensor headers, and writing
parameter chunks into a tensor. Typed refusals are fine; anything else is a crash.

    python fuzz/task_request.py -runs=20000          # what CI runs
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["agent"]):
    from google.protobuf.message import DecodeError

    from agent.api.edge_agent.v1 import agent_pb2 as pb
    from agent.server.task_endpoints import specification, tensor_decl
    from agent.tasks.errors import TaskSpecError
    from agent.tasks.tensors import TensorAssembler, TensorDecl, TensorError


def test_one_input(data: bytes) -> None:
    try:
        request = pb.RunTaskRequest.FromString(data)
    except DecodeError:
        return
    kind = request.WhichOneof("part")
    try:
        if kind == "spec":
            specification(request.spec)
            for index, header in enumerate(request.spec.parameters):
                tensor_decl(header, f"parameters[{index}]")
        elif kind == "parameter_chunk":
            assembler = TensorAssembler([TensorDecl("w", "float32", (4,)), TensorDecl("b", "float32", ())])
            chunk = request.parameter_chunk
            assembler.write(chunk.tensor_index, chunk.offset, chunk.data)
    except (TaskSpecError, TensorError):
        pass


def seeds() -> list[bytes]:
    """Valid messages to mutate from: most random bytes do not even decode."""
    spec = pb.TaskSpec(
        kind=pb.TASK_KIND_DP_LOCAL_TRAINING,
        package_digest="sha256:" + "ab" * 32,
        dataset_id="cohort",
        hyperparameters=pb.DPHyperparameters(
            clip_norm=1.0, noise_multiplier=1.1, sampling_rate=0.01, local_steps=5, learning_rate=0.1
        ),
        parameters=[pb.TensorHeader(name="w", dtype=pb.DTYPE_FLOAT32, shape=[4], byte_length=16)],
        run_id="run",
        round=3,
        correlation_id="run/3",
        purpose="research",
    )
    chunk = pb.TensorChunk(tensor_index=0, offset=4, data=b"\x00" * 8)
    return [
        pb.RunTaskRequest(spec=spec).SerializeToString(),
        pb.RunTaskRequest(parameter_chunk=chunk).SerializeToString(),
    ]


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="fuzz-task-request-"))
    for index, seed in enumerate(seeds()):
        (corpus / f"seed-{index}").write_bytes(seed)
    atheris.Setup([*sys.argv, str(corpus)], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
