"""The contract's DType enum beside the agent's dtype names (agent.tasks.tensors.DTYPES), in one place."""

from __future__ import annotations

from collections.abc import Mapping

from agent.api.edge_agent.v1 import agent_pb2 as pb

DTYPE_BY_CODE: Mapping[pb.DType.ValueType, str] = {
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_FLOAT64: "float64",
    pb.DTYPE_INT32: "int32",
    pb.DTYPE_INT64: "int64",
    pb.DTYPE_BOOL: "bool",
}
CODE_BY_DTYPE: Mapping[str, pb.DType.ValueType] = {name: code for code, name in DTYPE_BY_CODE.items()}
