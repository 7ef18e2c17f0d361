"""Moves every name of a package graph into a namespace the agent controls.

The isolation wrapper embeds the package's graph as (part of) the body of an ONNX
``Scan``. ONNX resolves a name inside a subgraph against the enclosing graphs too, so a
package value named like one of the agent's values could read or shadow it. Prefixing
*every* name the package declares or references with :data:`PACKAGE_PREFIX`, while the
agent names its own values with :data:`AGENT_PREFIX`, makes such a collision
impossible: after renaming, the package can only refer to ``package::*`` values, and
the only ``package::*`` values the agent defines are the package's declared inputs
(see :mod:`agent.runtime.isolation`). A reference to anything else is dangling and the
wrapper fails ``onnx.checker``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import onnx
from onnx import AttributeProto

from agent.runtime.errors import WrapperBuildError

PACKAGE_PREFIX = "package::"
AGENT_PREFIX = "agent::"
_SUBGRAPHS = frozenset({AttributeProto.GRAPH, AttributeProto.GRAPHS})


def package_name(name: str) -> str:
    """The namespaced form of a package value or node name ("" stays "": an omitted
    optional input)."""
    return PACKAGE_PREFIX + name if name else ""


@dataclass(frozen=True, eq=False)
class NamespacedGraph:
    """The package graph's computation with every name prefixed.

    ``inputs`` and ``outputs`` map the package's declared interface names (``w``, ``x``,
    ``grad_w``, ...) to their namespaced value names. ``nodes`` and ``initializers`` are
    fresh protos (the source model is not modified). The package's declared output and
    value-info *types* are dropped on purpose: the agent checks shapes itself, at run time.
    """

    nodes: tuple[onnx.NodeProto, ...]
    initializers: tuple[onnx.TensorProto, ...]
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]


def namespaced(graph: onnx.GraphProto) -> NamespacedGraph:
    """Copies ``graph`` with all names in :data:`PACKAGE_PREFIX`; refuses graphs the
    wrapper cannot reason about (subgraphs, sparse initializers, function references)."""
    if len(graph.sparse_initializer) > 0:
        raise WrapperBuildError("the package graph has sparse initializers")
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type in _SUBGRAPHS or attribute.ref_attr_name:
                raise WrapperBuildError(f"package node {node.op_type} holds a subgraph or attribute reference")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = package_name(node.name)
        del copy.input[:]
        copy.input.extend(package_name(name) for name in node.input)
        del copy.output[:]
        copy.output.extend(package_name(name) for name in node.output)
        copy.doc_string = ""
        nodes.append(copy)
    initializers: list[onnx.TensorProto] = []
    for tensor in graph.initializer:
        renamed = onnx.TensorProto()
        renamed.CopyFrom(tensor)
        renamed.name = package_name(tensor.name)
        initializers.append(renamed)
    return NamespacedGraph(
        nodes=tuple(nodes),
        initializers=tuple(initializers),
        inputs=MappingProxyType({value.name: package_name(value.name) for value in graph.input}),
        outputs=MappingProxyType({value.name: package_name(value.name) for value in graph.output}),
    )
