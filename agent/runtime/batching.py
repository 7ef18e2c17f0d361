"""A batching compiler for single-example graphs: a "vmap" for ONNX, written by the agent.

A package carries a graph for *one* example (``x`` ``[F]``, ``y`` ``[*label]``). Running
it once per row in a ``Scan`` (:mod:`agent.runtime.isolation`) is isolated by
construction but slow. This module rewrites the graph so that it processes ``N`` rows
at once while keeping the same guarantee: **row i of every output depends only on row i
of the inputs**.

How:

* Every value is classified as *batched* (it depends on ``x`` or ``y``: it gets a
  leading axis of length N, row i being the value the single-example graph computes
  for row i) or *unbatched* (it depends only on parameters and constants, and is the
  same for every row). Unbatched nodes are copied verbatim: they never see a row.
* A node with at least one batched input is rewritten by the rule for its operator
  (:data:`RULES`). Each rule emits operators on the ``[N, *single-example shape]``
  layout that only ever act within a row: axes are shifted past the batch axis (and an
  axis that would land on it is impossible by construction), reshapes take the batch
  size from the input (``0`` in a Reshape shape), broadcasting operands are aligned so
  that the batch axis only ever meets another batch axis, and anything shaped or
  indexed by a row value is refused.
* An operator without a rule, or a case a rule does not handle, raises
  :class:`BatchingRefused` with the reason; the caller falls back to the ``Scan`` path.
* Every value's single-example shape must be static (the package validator requires
  it); ``Shape`` and ``Size`` of a batched value are therefore folded into constants.
* After rewriting, ONNX shape inference with a symbolic batch dimension must give
  every batched value the shape ``[N, *its single-example shape]`` and every unbatched
  value its single-example shape; a mismatch is refused too (a second, independent
  check of the rules' layout bookkeeping).

The rules are the security-relevant part; they are deliberately small and refuse
rather than handle a rare case. ``tests/runtime/test_batching*.py`` checks them
differentially against the single-example graph run row by row, and checks isolation
by perturbing one row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from agent.runtime.errors import WrapperBuildError
from agent.runtime.namespace import AGENT_PREFIX, NamespacedGraph, namespaced, package_name

BATCH_DIM = "N"
"""The symbolic batch dimension used for the layout check."""


class BatchingRefused(WrapperBuildError):  # noqa: N818 - a refusal, not a failure of the agent
    """The compiler cannot batch this graph; the caller runs the ``Scan`` path instead."""


@dataclass(frozen=True)
class Operand:
    """A value of the batched graph, with its single-example type."""

    name: str
    batched: bool
    shape: tuple[int, ...]
    elem_type: int

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True, eq=False)
class BatchedGraph:
    """The package graph rewritten for ``N`` rows, every name in ``package::``/``agent::``.

    ``inputs``/``outputs`` map the package's interface names to value names;
    ``batched_outputs`` names the outputs that carry a leading batch axis (the others
    are the same for every row); ``output_shapes`` are the single-example shapes.
    """

    nodes: tuple[onnx.NodeProto, ...]
    initializers: tuple[onnx.TensorProto, ...]
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    batched_outputs: frozenset[str]
    output_shapes: Mapping[str, tuple[int, ...]]
    layout: Mapping[str, tuple[bool, tuple[int, ...]]]
    """Every package value: (batched, single-example shape), for :func:`check_layout`."""
    opset: int


class Emitter:
    """Appends agent-named nodes; knows the opset and the single-example types."""

    def __init__(self, opset: int, batch_size: str, prefix: str = AGENT_PREFIX + "batch::") -> None:
        self.opset = opset
        self._prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.batch_size = batch_size
        """A 1-D int64 value ``[N]`` (the batch size), computed from the batched ``x``."""
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self._prefix}{hint.lower()}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attributes: Any) -> str:
        name = output if output is not None else self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=self.fresh("node"), **attributes))
        return name

    def constant(self, value: object) -> str:
        name = self.fresh("const")
        array = np.asarray(value)
        self.nodes.append(
            helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(array, name))
        )
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.constant(np.array(list(values), np.int64))

    def unsqueeze(self, operand: Operand, axes: Sequence[int]) -> str:
        return operand.name if not axes else self.op("Unsqueeze", [operand.name, self.ints(axes)])

    def align(self, operand: Operand, rank: int) -> str:
        """A batched operand of single-example rank ``r <= rank`` as ``[N, 1..., *shape]`` with
        ``rank`` non-batch axes: numpy broadcasting then meets its batch axis only with
        another batch axis (or nothing), never with a per-example axis."""
        if not operand.batched or operand.rank >= rank:
            return operand.name
        return self.unsqueeze(operand, range(1, 1 + rank - operand.rank))

    def expand_rows(self, operand: Operand) -> str:
        """An unbatched value copied into every row: ``[N, *shape]`` (copies one value, mixes nothing)."""
        if operand.batched:
            return operand.name
        target = self.op("Concat", [self.batch_size, self.ints(operand.shape)], axis=0)
        return self.op("Expand", [self.unsqueeze(operand, [0]), target])


@dataclass(frozen=True)
class NodeView:
    """What a rule sees of one package node."""

    node: onnx.NodeProto
    operands: tuple[Operand | None, ...]
    """One per input; ``None`` for an omitted optional input."""
    output_shapes: tuple[tuple[int, ...], ...]
    constants: Mapping[str, np.ndarray]

    def attr(self, name: str, default: Any = None) -> Any:
        for attribute in self.node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default

    def other_attributes(self, *names: str) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in self.node.attribute if a.name not in names}

    def operand(self, index: int) -> Operand | None:
        return self.operands[index] if index < len(self.operands) else None

    def first(self) -> Operand:
        operand = self.operand(0)
        if operand is None:
            raise BatchingRefused(f"{self.node.op_type} has no first input")
        return operand

    def constant_ints(self, index: int) -> list[int] | None:
        """Input ``index`` as a list of ints if it is a constant; ``None`` if omitted."""
        operand = self.operand(index)
        if operand is None:
            return None
        value = self.constants.get(operand.name)
        if value is None:
            raise BatchingRefused(f"{self.node.op_type} input {index} must be a constant to be batched")
        return [int(v) for v in np.asarray(value).reshape(-1)]


# A rule emits the batched computation of ``view.node`` (writing its outputs under the
# node's own output names) and returns which outputs are batched.
Rule = Callable[[Emitter, NodeView], tuple[bool, ...]]


def _refuse(view: NodeView, why: str) -> BatchingRefused:
    return BatchingRefused(f"{view.node.op_type}: {why}")


def _axis(view: NodeView, axis: int, rank: int) -> int:
    """A single-example axis (possibly negative) as a batched axis (>= 1)."""
    if not -rank <= axis < rank:
        raise _refuse(view, f"axis {axis} is outside rank {rank}")
    return (axis % rank) + 1


def _copy(emitter: Emitter, view: NodeView, inputs: Sequence[str], **attributes: Any) -> None:
    emitter.nodes.append(
        helper.make_node(
            view.node.op_type,
            list(inputs),
            list(view.node.output),
            name=view.node.name or emitter.fresh("node"),
            **attributes,
        )
    )


def _require_unbatched(view: NodeView, indices: Sequence[int], what: str) -> None:
    for index in indices:
        operand = view.operand(index)
        if operand is not None and operand.batched:
            raise _refuse(view, f"{what} depends on the row")


# -- element-wise -------------------------------------------------------------------------


def _unary(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    """Ops acting on each element independently; extra inputs (Clip's bounds, CastLike's
    target) must be unbatched scalars/types: they are passed through unchanged."""
    if view.node.op_type == "Clip":
        _require_unbatched(view, (1, 2), "a Clip bound")
    first = view.first()
    if not first.batched:  # CastLike(unbatched, batched target): the result is unbatched
        _copy(emitter, view, view.node.input, **view.other_attributes())
        return (False,)
    _copy(emitter, view, view.node.input, **view.other_attributes())
    return (True,)


def _broadcasting(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    """Multidirectional numpy broadcasting: align every batched operand to the highest
    single-example rank, so that the batch axis stands left of every per-example axis of
    every operand and meets only batch axes (N) or nothing."""
    present = [o for o in view.operands if o is not None]
    rank = max(o.rank for o in present)
    if view.node.op_type == "PRelu":
        x, slope = view.first(), view.operand(1)
        if slope is not None and slope.batched and not x.batched:
            raise _refuse(view, "a row-dependent slope on an unbatched input")
    inputs = [emitter.align(o, rank) if o is not None else "" for o in view.operands]
    _copy(emitter, view, inputs, **view.other_attributes())
    return (True,)


# -- linear algebra -----------------------------------------------------------------------


def _matmul(emitter: Emitter, a: Operand, b: Operand, output: str | None) -> Operand:
    """numpy matmul of two operands (at least one batched), keeping rows apart.

    1-D operands are promoted explicitly (``[K]`` -> ``[1, K]`` on the left, ``[K, 1]`` on
    the right, removed afterwards), because ONNX's implicit promotion would treat a batched
    vector ``[N, K]`` as a matrix and contract across rows. Then the batched operands are
    aligned to the same rank, so their batch axes meet each other, never a matrix axis.
    """
    out_type = a.elem_type
    squeeze: list[int] = []
    if a.rank == 1 and b.rank == 2 and a.batched and not b.batched:
        # [N, K] @ [K, M]: row i of the result is x_i @ W exactly; one GEMM.
        name = emitter.op("MatMul", [a.name, b.name], output)
        return Operand(name, True, (b.shape[1],), out_type)
    if a.rank == 1:
        a = Operand(emitter.unsqueeze(a, [1 if a.batched else 0]), a.batched, (1, a.shape[0]), a.elem_type)
        squeeze.append(-2)
    if b.rank == 1:
        b = Operand(emitter.unsqueeze(b, [2 if b.batched else 1]), b.batched, (b.shape[0], 1), b.elem_type)
        squeeze.append(-1)
    rank = max(a.rank, b.rank)
    batch_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    shape = (*batch_shape, a.shape[-2], b.shape[-1])
    product = emitter.op("MatMul", [emitter.align(a, rank), emitter.align(b, rank)], None if squeeze else output)
    if squeeze:
        # The promoted unit axes, counted from the end (both batched and unbatched results
        # have them in the same place from the right).
        axes = sorted({len(shape) + 1 + s for s in squeeze})
        product = emitter.op("Squeeze", [product, emitter.ints(axes)], output)
        shape = tuple(d for i, d in enumerate(shape) if i + 1 not in axes)
    return Operand(product, True, tuple(shape), out_type)


def _matmul_rule(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    a, b = view.first(), view.operand(1)
    if b is None:
        raise _refuse(view, "missing input")
    result = _matmul(emitter, a, b, view.node.output[0])
    if result.shape != view.output_shapes[0]:
        raise _refuse(view, f"batched shape {result.shape} differs from {view.output_shapes[0]}")
    return (True,)


def _transpose2(emitter: Emitter, operand: Operand) -> Operand:
    perm = [0, 2, 1] if operand.batched else [1, 0]
    return Operand(
        emitter.op("Transpose", [operand.name], perm=perm), operand.batched, operand.shape[::-1], operand.elem_type
    )


def _gemm(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    """``alpha * op(A) @ op(B) + beta * C`` as Transpose, MatMul, Mul and Add rules."""
    a, b, c = view.first(), view.operand(1), view.operand(2)
    if b is None or a.rank != 2 or b.rank != 2:
        raise _refuse(view, "Gemm needs two 2-D inputs")
    if view.attr("transA", 0):
        a = _transpose2(emitter, a)
    if view.attr("transB", 0):
        b = _transpose2(emitter, b)
    alpha, beta = float(view.attr("alpha", 1.0)), float(view.attr("beta", 1.0))
    result = _matmul(emitter, a, b, None)
    value = result.name
    if alpha != 1.0:
        value = emitter.op("Mul", [value, emitter.constant(np.array(alpha, np.float32))])
    if c is not None:
        term = emitter.align(c, 2)
        if beta != 1.0:
            term = emitter.op("Mul", [term, emitter.constant(np.array(beta, np.float32))])
        value = emitter.op("Add", [value, term])
    emitter.op("Identity", [value], view.node.output[0])
    return (True,)


# -- axis operators -----------------------------------------------------------------------


def _single_axis(default: int) -> Rule:
    """Softmax, LogSoftmax, Hardmax, ArgMax, ArgMin: one ``axis`` attribute, shifted by one."""

    def rule(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
        x = view.first()
        _require_unbatched(view, range(1, len(view.operands)), "an extra input")
        if x.rank == 0:
            raise _refuse(view, "a scalar input has no axis")
        axis = _axis(view, int(view.attr("axis", default)), x.rank)
        _copy(emitter, view, view.node.input, **(view.other_attributes("axis") | {"axis": axis}))
        return (True,)

    return rule


_AXES_INPUT_SINCE = {"ReduceSum": 13}
_REDUCE_OPS = (
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2",
    "ReduceLogSumExp",
)  # fmt: skip


def _reduce(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    """Reductions over the per-example axes only: the axes (all of them when omitted) are
    shifted past the batch axis, which is therefore never reduced."""
    x = view.first()
    op = view.node.op_type
    axes_as_input = emitter.opset >= _AXES_INPUT_SINCE.get(op, 18)
    axes = view.constant_ints(1) if axes_as_input else view.attr("axes")
    keepdims = int(view.attr("keepdims", 1))
    if not axes:
        if axes_as_input and int(view.attr("noop_with_empty_axes", 0)):
            emitter.op("Identity", [x.name], view.node.output[0])
            return (True,)
        axes = list(range(x.rank))
    data = x.name
    if x.rank == 0:
        # Reducing a scalar over "all of its axes" applies the reduction to one element;
        # batched, that element gets its own axis so that N is left alone.
        data, batched_axes, keepdims = emitter.unsqueeze(x, [1]), [1], 0
    else:
        batched_axes = sorted({_axis(view, int(a), x.rank) for a in axes})
    attributes = view.other_attributes("axes", "keepdims", "noop_with_empty_axes") | {"keepdims": keepdims}
    if axes_as_input:
        _copy(emitter, view, [data, emitter.ints(batched_axes)], **attributes)
    else:
        _copy(emitter, view, [data], **(attributes | {"axes": batched_axes}))
    return (True,)


def _concat(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    present = [o for o in view.operands if o is not None]
    rank = present[0].rank
    axis = _axis(view, int(view.attr("axis")), rank)
    _copy(emitter, view, [emitter.expand_rows(o) for o in present], axis=axis)
    return (True,)


def _split(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    x = view.first()
    _require_unbatched(view, (1,), "the split sizes")
    axis = _axis(view, int(view.attr("axis", 0)), x.rank)
    _copy(emitter, view, view.node.input, **(view.other_attributes("axis") | {"axis": axis}))
    return tuple(True for _ in view.node.output)


def _slice(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    x = view.first()
    _require_unbatched(view, (1, 2, 3, 4), "a slice bound")
    starts = view.operand(1)
    if starts is None or starts.rank != 1:
        raise _refuse(view, "starts must be a 1-D input")
    axes = view.constant_ints(3)
    if axes is None:
        axes = list(range(starts.shape[0]))
    inputs = [x.name, view.node.input[1], view.node.input[2], emitter.ints([_axis(view, a, x.rank) for a in axes])]
    steps = view.operand(4)
    if steps is not None:
        inputs.append(steps.name)
    _copy(emitter, view, inputs)
    return (True,)


def _transpose(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    x = view.first()
    perm = view.attr("perm")
    perm = list(range(x.rank))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(perm) != list(range(x.rank)):
        raise _refuse(view, "perm is not a permutation of the axes")
    _copy(emitter, view, [x.name], perm=[0, *(p + 1 for p in perm)])
    return (True,)


def _unsqueeze(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    x = view.first()
    axes = view.constant_ints(1) or []
    out_rank = x.rank + len(axes)
    _copy(emitter, view, [x.name, emitter.ints(sorted(_axis(view, a, out_rank) for a in axes))])
    return (True,)


def _squeeze(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    x = view.first()
    axes = view.constant_ints(1)
    # Without axes Squeeze drops every unit axis, which would include N = 1: name them.
    chosen = [i for i, d in enumerate(x.shape) if d == 1] if axes is None else axes
    if not chosen:
        emitter.op("Identity", [x.name], view.node.output[0])
        return (True,)
    _copy(emitter, view, [x.name, emitter.ints(sorted({_axis(view, a, x.rank) for a in chosen}))])
    return (True,)


def _reshape_to(emitter: Emitter, view: NodeView, x: Operand, shape: tuple[int, ...]) -> tuple[bool, ...]:
    """Row-major reshape of ``[N, *a]`` to ``[N, *b]`` with ``prod(a) == prod(b)``: row i's
    elements stay in row i's block. The target is the statically inferred single-example
    shape; ``0`` copies N from the input (ONNX ``allowzero=0``), never ``-1``."""
    if math.prod(shape) != math.prod(x.shape) or math.prod(shape) == 0:
        raise _refuse(view, f"cannot reshape {x.shape} to {shape} row by row")
    _copy(emitter, view, [x.name, emitter.ints([0, *shape])])
    return (True,)


def _reshape(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    _require_unbatched(view, (1,), "the target shape")
    return _reshape_to(emitter, view, view.first(), view.output_shapes[0])


def _flatten(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    x = view.first()
    out = view.output_shapes[0]
    if math.prod(out) != math.prod(x.shape) or math.prod(out) == 0:
        raise _refuse(view, "cannot flatten row by row")
    emitter.nodes.append(
        helper.make_node("Reshape", [x.name, emitter.ints([0, *out])], list(view.node.output), name=emitter.fresh("f"))
    )
    return (True,)


def _expand(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    x = view.first()
    _require_unbatched(view, (1,), "the target shape")
    out = view.output_shapes[0]
    if x.rank > len(out):
        raise _refuse(view, "input rank above output rank")
    _copy(emitter, view, [emitter.align(x, len(out)), emitter.ints([1, *out])])
    return (True,)


def _tile(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    _require_unbatched(view, (1,), "the repeats")
    constant = view.constants.get(view.node.input[1])
    if constant is not None:  # a constant keeps the layout check's shape inference exact
        repeats = emitter.ints([1, *(int(r) for r in np.asarray(constant).reshape(-1))])
    else:
        repeats = emitter.op("Concat", [emitter.ints([1]), view.node.input[1]], axis=0)
    _copy(emitter, view, [view.first().name, repeats])
    return (True,)


def _gather(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    data = view.first()
    _require_unbatched(view, (1,), "the indices")
    axis = _axis(view, int(view.attr("axis", 0)), data.rank)
    _copy(emitter, view, view.node.input, axis=axis)
    return (True,)


def _gather_elements(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    data, indices = view.first(), view.operand(1)
    if indices is None:
        raise _refuse(view, "missing indices")
    if not data.batched:
        raise _refuse(view, "row-dependent indices into an unbatched tensor")
    axis = _axis(view, int(view.attr("axis", 0)), data.rank)
    _copy(emitter, view, [data.name, emitter.expand_rows(indices)], axis=axis)
    return (True,)


def _one_hot(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    indices = view.first()
    _require_unbatched(view, (1, 2), "depth or values")
    axis = _axis(view, int(view.attr("axis", -1)), indices.rank + 1)
    _copy(emitter, view, view.node.input, axis=axis)
    return (True,)


def _shape_constant(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
    """``Shape``/``Size`` of a batched value: the single-example answer, a constant
    (static shapes), so nothing about N or the row leaks into the computation."""
    x = view.first()
    if view.node.op_type == "Size":
        value = np.array(math.prod(x.shape), np.int64)
    else:
        value = np.array(x.shape, np.int64)[slice(view.attr("start", 0), view.attr("end"))]
    output = view.node.output[0]
    emitter.nodes.append(
        helper.make_node("Constant", [], [output], name=emitter.fresh("shape"), value=numpy_helper.from_array(value))
    )
    return (False,)


def _refused(why: str) -> Rule:
    def rule(emitter: Emitter, view: NodeView) -> tuple[bool, ...]:
        raise _refuse(view, why)

    return rule


_UNARY = (
    "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Sign", "Floor", "Ceil", "Round", "Erf", "Relu",
    "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign",
    "Gelu", "Not", "IsNaN", "IsInf", "Cast", "CastLike", "Identity", "Clip",
)  # fmt: skip
_BROADCASTING = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal",
    "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Where", "PRelu",
)  # fmt: skip

RULES: Mapping[str, Rule] = MappingProxyType(
    {op: _unary for op in _UNARY}
    | {op: _broadcasting for op in _BROADCASTING}
    | {op: _reduce for op in _REDUCE_OPS}
    | {
        "MatMul": _matmul_rule,
        "Gemm": _gemm,
        "Softmax": _single_axis(-1),
        "LogSoftmax": _single_axis(-1),
        "Hardmax": _single_axis(-1),
        "ArgMax": _single_axis(0),
        "ArgMin": _single_axis(0),
        "Concat": _concat,
        "Split": _split,
        "Slice": _slice,
        "Transpose": _transpose,
        "Unsqueeze": _unsqueeze,
        "Squeeze": _squeeze,
        "Reshape": _reshape,
        "Flatten": _flatten,
        "Expand": _expand,
        "Tile": _tile,
        "Gather": _gather,
        "GatherElements": _gather_elements,
        "OneHot": _one_hot,
        "Shape": _shape_constant,
        "Size": _shape_constant,
        "Range": _refused("a range sized by a row value"),
        "ConstantOfShape": _refused("a tensor sized by a row value"),
    }
)
"""Batching rule per operator of the default domain; anything else is refused."""


# -- the pass -----------------------------------------------------------------------------


def _static_types(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Element type and static shape of every value of the single-example graph."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError, ValidationError
        raise BatchingRefused(f"shape inference failed ({type(exc).__name__})") from None
    graph = inferred.graph
    types: dict[str, tuple[int, tuple[int, ...]]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            dims = tensor.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                types[info.name] = (tensor.elem_type, tuple(int(d.dim_value) for d in dims))
    for initializer in graph.initializer:
        types[initializer.name] = (initializer.data_type, tuple(int(d) for d in initializer.dims))
    return types


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_int", "value_ints", "value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(attribute))
    return None


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if len(versions) != 1 or len(model.opset_import) != 1 or len(model.functions) > 0:
        raise BatchingRefused("the graph must import the default ONNX domain only, once")
    return versions[0]


def batch_graph(model: onnx.ModelProto, batched_inputs: frozenset[str], batch_size: str) -> BatchedGraph:
    """Rewrites the single-example graph ``model`` for a leading batch axis on ``batched_inputs``.

    ``batch_size`` names a 1-D int64 value ``[N]`` the caller defines (rules that copy an
    unbatched value into every row need it). Raises :class:`BatchingRefused`.
    """
    opset = _default_opset(model)
    types = _static_types(model)
    package: NamespacedGraph = namespaced(model.graph)
    shapes = {package_name(v): t for v, t in types.items()}
    constants: dict[str, np.ndarray] = {package_name(t.name): numpy_helper.to_array(t) for t in model.graph.initializer}
    batched = {package.inputs[name] for name in batched_inputs}
    emitter = Emitter(opset, batch_size)
    for node in package.nodes:
        if node.op_type == "Constant":
            value = _constant_value(node)
            if value is not None:
                constants[node.output[0]] = value
        operands: list[Operand | None] = []
        for name in node.input:
            found = shapes.get(name) if name else None
            if name and found is None:
                raise BatchingRefused(f"{node.op_type}: input without a static shape")
            operands.append(Operand(name, name in batched, found[1], found[0]) if found is not None else None)
        if not any(o is not None and o.batched for o in operands):
            # Parameters and constants only: the same for every row; copied as it is.
            emitter.nodes.append(node)
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            raise BatchingRefused(f"{node.op_type}: no batching rule")
        output_shapes: list[tuple[int, ...]] = []
        for name in node.output:
            found = shapes.get(name) if name else None
            if found is None:
                raise BatchingRefused(f"{node.op_type}: output without a static shape")
            output_shapes.append(found[1])
        view = NodeView(node, tuple(operands), tuple(output_shapes), MappingProxyType(constants))
        try:
            flags = rule(emitter, view)
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            # A malformed attribute or an unexpected shape: refuse rather than guess.
            raise BatchingRefused(f"{node.op_type}: cannot batch ({type(exc).__name__})") from None
        batched.update(name for name, flag in zip(node.output, flags, strict=True) if flag)
    missing = [name for name, value in package.outputs.items() if value not in shapes]
    if missing:
        raise BatchingRefused(f"outputs without a static shape: {missing[:5]}")
    # Inputs and node outputs (initializers do not appear in inferred value infos).
    produced = set(package.inputs.values()) | {name for node in package.nodes for name in node.output if name}
    layout = {name: (name in batched, shape) for name, (_, shape) in shapes.items() if name in produced}
    return BatchedGraph(
        nodes=tuple(emitter.nodes),
        initializers=package.initializers,
        inputs=package.inputs,
        outputs=package.outputs,
        batched_outputs=frozenset(name for name, value in package.outputs.items() if value in batched),
        output_shapes=MappingProxyType({name: shapes[value][1] for name, value in package.outputs.items()}),
        layout=MappingProxyType(layout),
        opset=opset,
    )


def check_layout(model: onnx.ModelProto, expected: Mapping[str, tuple[bool, tuple[int, ...]]]) -> None:
    """Shape inference on the batched model (batch dimension symbolic) must agree with the
    rules' bookkeeping: ``[N, *shape]`` for batched values, ``shape`` for the others."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError, ValidationError
        raise BatchingRefused(f"the batched graph fails shape inference ({type(exc).__name__})") from None
    found: dict[str, list[int | str]] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        found[info.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    present = {value.name for value in model.graph.input} | {o for node in model.graph.node for o in node.output}
    for name, (is_batched, shape) in expected.items():
        if name not in present:
            continue  # not computed: nothing the wrapper returns depends on it
        want: list[int | str] = [BATCH_DIM, *shape] if is_batched else list(shape)
        got = found.get(name)
        if got is not None and is_batched and got[1:] == want[1:] and str(got[0]).startswith("unk__"):
            # ONNX's symbolic inference does not simplify N * 1 (the Tile rule's batch
            # repeat) and propagates an unnamed dimension from there: accepted as the
            # leading dimension, never a number or another name.
            continue
        if got != want:
            raise BatchingRefused(f"layout check: {name} is {found.get(name)}, expected {want}")
