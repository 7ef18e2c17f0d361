"""Graph-writing pieces shared by the zoo's builders.

The zoo writes every graph by hand with :mod:`onnx.helper`: ONNX has no automatic
differentiation, so each model's backward pass is spelled out operator by operator.
:class:`GraphBuilder` keeps that readable: it hands out unique value names, turns
Python numbers into ``Constant`` nodes and, in :meth:`GraphBuilder.to_model`, stamps
the model with the zoo's fixed format (opset 17 of the default domain, IR version 8,
no functions, no external data) and runs ``onnx.checker`` with ``full_check=True``.

Constants become ``Constant`` nodes rather than initializers so that a single-example
graph carries no initializers at all and can be embedded as a subgraph (for example
as the body of the agent's ``Scan`` wrapper) without renaming anything. Trained
parameter values of inference models are the exception: they are initializers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET_VERSION = 17
"""Opset of the default ONNX domain used by every zoo graph."""

IR_VERSION = 8
"""IR version matching opset 17; loadable by onnxruntime >= 1.14."""

PRODUCER_NAME = "edge-agent.publisher.zoo"

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64

Dim = int | str
"""A tensor dimension: a fixed size, or a name for a dynamic size (such as ``"N"``)."""


class GraphBuilder:
    """Accumulates the nodes, inputs and outputs of one ONNX graph."""

    def __init__(self, name: str, doc: str) -> None:
        self._name = name
        self._doc = doc
        self._nodes: list[onnx.NodeProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._taken: set[str] = set()
        self._counter = 0

    # -- names -------------------------------------------------------------------------

    def _claim(self, name: str) -> str:
        if not name or name in self._taken:
            raise ValueError(f"value name {name!r} is empty or already used in {self._name}")
        self._taken.add(name)
        return name

    def _fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            candidate = f"{hint}_{self._counter}"
            if candidate not in self._taken:
                return self._claim(candidate)

    # -- declarations ------------------------------------------------------------------

    def add_input(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        """Declares a graph input and returns its value name."""
        self._inputs.append(helper.make_tensor_value_info(self._claim(name), elem_type, shape))
        return name

    def add_initializer(self, name: str, value: npt.NDArray[np.generic]) -> str:
        """Stores ``value`` in the graph as an initializer (not as an input)."""
        self._initializers.append(numpy_helper.from_array(np.asarray(value), self._claim(name)))
        return name

    def add_output(self, value: str, name: str, elem_type: int, shape: Sequence[Dim]) -> None:
        """Exposes ``value`` as graph output ``name`` (through ``Identity`` if names differ)."""
        if value != name:
            self._nodes.append(helper.make_node("Identity", [value], [self._claim(name)]))
        self._outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    # -- nodes -------------------------------------------------------------------------

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes: Any) -> str:
        """Adds one single-output node of the default domain and returns its output name."""
        output = self._claim(out) if out is not None else self._fresh(op_type.lower())
        self._nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def constant(
        self, value: float | Sequence[float] | npt.NDArray[np.generic], *, dtype: type = np.float32
    ) -> str:
        """Adds a ``Constant`` node holding ``value`` (a scalar stays rank 0)."""
        array: npt.NDArray[np.generic] = np.asarray(value, dtype=dtype)
        output = self._fresh("const")
        tensor = numpy_helper.from_array(array, f"{output}_value")
        self._nodes.append(helper.make_node("Constant", [], [output], value=tensor))
        return output

    def int64s(self, values: Sequence[int]) -> str:
        """Adds a 1-D int64 ``Constant`` (axes for ``Unsqueeze`` and friends)."""
        return self.constant(np.asarray(values, dtype=np.int64), dtype=np.int64)

    # -- assembly ----------------------------------------------------------------------

    def to_model(self, metadata: Mapping[str, str] | None = None) -> onnx.ModelProto:
        """Returns the checked model; raises ``onnx.checker.ValidationError`` if invalid."""
        graph = helper.make_graph(
            self._nodes,
            self._name,
            self._inputs,
            self._outputs,
            initializer=self._initializers,
            doc_string=self._doc,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET_VERSION)],
            ir_version=IR_VERSION,
            producer_name=PRODUCER_NAME,
            doc_string=self._doc,
        )
        if metadata:
            helper.set_model_props(model, dict(metadata))
        onnx.checker.check_model(model, full_check=True)
        return model


# -- pieces of arithmetic used by several models ----------------------------------------


def linear_score(g: GraphBuilder, x: str, w: str, b: str) -> str:
    """``x @ w + b``: a scalar for ``x`` of shape [F], a vector [N] for ``x`` of shape [N, F]."""
    return g.op("Add", g.op("MatMul", x, w), b)


def outer_product(g: GraphBuilder, column: str, row: str) -> str:
    """``column[:, None] * row[None, :]`` for two vectors."""
    return g.op(
        "MatMul",
        g.op("Unsqueeze", column, g.int64s([1])),
        g.op("Unsqueeze", row, g.int64s([0])),
    )


def clipped(g: GraphBuilder, value: str, bounds: tuple[float, float], *, out: str) -> str:
    """Clamps ``value`` into ``bounds`` (NaN stays NaN; the agent zeroes non-finite rows)."""
    low, high = bounds
    return g.op("Clip", value, g.constant(low), g.constant(high), out=out)


def weight_decay_penalty(g: GraphBuilder, weights: Sequence[str], l2: float) -> str:
    """``0.5 * l2 * sum(||W||^2 for W in weights)`` as a scalar."""
    squares = [g.op("ReduceSum", g.op("Mul", w, w), keepdims=0) for w in weights]
    total = squares[0]
    for square in squares[1:]:
        total = g.op("Add", total, square)
    return g.op("Mul", total, g.constant(0.5 * l2))


def with_weight_decay(g: GraphBuilder, gradient: str, weight: str, l2: float, *, out: str) -> str:
    """``gradient + l2 * weight`` (just a rename when ``l2`` is zero)."""
    if l2 == 0.0:
        return g.op("Identity", gradient, out=out)
    return g.op("Add", gradient, g.op("Mul", weight, g.constant(l2)), out=out)


def plus_weight_decay(g: GraphBuilder, loss: str, weights: Sequence[str], l2: float) -> str:
    """``loss + 0.5 * l2 * sum ||W||^2`` (``loss`` itself when ``l2`` is zero)."""
    if l2 == 0.0:
        return loss
    return g.op("Add", loss, weight_decay_penalty(g, weights, l2))


def logistic_pair(g: GraphBuilder, z: str) -> tuple[str, str]:
    """``(sigmoid(z), sigmoid(-z))``, accurate to float32 relative precision in both tails.

    Computed as ``exp(min(+-z, 0)) / (1 + exp(-|z|))`` rather than with the ``Sigmoid``
    operator: onnxruntime's float32 ``Sigmoid`` kernel is a rational approximation whose
    relative error grows beyond ``|z| ~ 10`` (about 17 % at ``z = -15``) and which returns
    exactly 0 below ``z ~ -18``, which would zero the gradients of confident predictions.
    """
    zero = g.constant(0.0)
    denominator = g.op("Add", g.constant(1.0), g.op("Exp", g.op("Neg", g.op("Abs", z))))
    positive = g.op("Div", g.op("Exp", g.op("Min", z, zero)), denominator)
    negative = g.op("Div", g.op("Exp", g.op("Neg", g.op("Max", z, zero))), denominator)
    return positive, negative
