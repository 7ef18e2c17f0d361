"""The batched wrapper: the agent's compiled batch of a single-example graph plus its clipping.

Same interface as the ``Scan`` wrapper (:func:`agent.runtime.isolation.build_wrapper`):
inputs ``agent::param::<p>``, ``agent::x`` ``[N, F]``, ``agent::y`` ``[N, *label]``
(and ``agent::clip_norm``), output ``agent::sum`` float64 ``[layout size]``; the same
numbers up to float rounding. Instead of a ``Scan`` it contains the package graph
rewritten by :func:`agent.runtime.batching.batch_graph` (row i of every value depends
only on row i), followed by the agent's tail on the ``[N, P]`` per-example results:

* gradients: per row, in float64, the global L2 norm over all parameters; a row with
  any NaN or infinity becomes zeros; each row scaled by ``C / max(norm, C)``; the rows
  summed (the only operation across rows, and it is the agent's);
* metrics: per row and metric, non-finite becomes 0, then clamped into ``[low, high]``;
  summed over rows.

A graph the compiler cannot batch raises :class:`~agent.runtime.batching.BatchingRefused`
(the session layer then builds the ``Scan`` wrapper).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.packages.manifest import Manifest
from agent.runtime.batching import BATCH_DIM, BatchedGraph, BatchingRefused, Emitter, batch_graph, check_layout
from agent.runtime.contribution import FLOAT32_OVERFLOW, bounded_metric_groups
from agent.runtime.errors import WrapperBuildError
from agent.runtime.isolation import CLIP_NORM, SUM, GraphRole, WrapperLayout, X, Y, layout_for, parameter_input
from agent.runtime.namespace import AGENT_PREFIX

DOUBLE = TensorProto.DOUBLE
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
ROW_INPUTS = frozenset({"x", "y"})
ROWS_PER_RUN = 256
"""Rows per run of a batched wrapper (the session layer feeds at most this many)."""
# With units=True the agent lays a run of whole privacy units out in blocks (BLOCKS)
# (agent.runtime.contribution.UnitBlocks): no unit crosses a block, and rows that fill a
# block up are padding rows whose results count as zeros. The wrapper takes the run's rows
# as they are and lays them out itself (ORDER, _unit_head): a Gather in the graph costs
# less than the NumPy copies a step would otherwise make.
ORDER = AGENT_PREFIX + "order"
"""int64 ``[N]``: the run's row at each position of the blocks, -1 on padding (which
then holds a copy of the run's last row, whose results count as zeros)."""
SAME_UNIT = AGENT_PREFIX + "same_unit"
"""bool ``[blocks, B, B]``: true where two rows of a block belong to one unit (false
throughout for a padding row)."""
MASK = AGENT_PREFIX + "same_unit_mask"
"""float64 (computed from SAME_UNIT): 1 where it is true, else 0. A matrix product with it
sums over each row's unit."""
BLOCKS = AGENT_PREFIX + "blocks"
"""int64 ``[3]`` (computed from SAME_UNIT's shape): ``(blocks, rows per block, -1)``, the
shape that lays an ``[N, w]`` value out in blocks (``N`` is blocks times rows per block)."""
PADDING = AGENT_PREFIX + "padding"
"""bool ``[N, 1]`` (computed from ORDER): true on the padding rows."""
RUN_ROWS = "run_rows"
"""The symbolic number of rows of ``agent::x`` and ``agent::y`` with units (``N``: positions)."""

MAX_BATCHED_BYTES = 512 * 1024 * 1024
"""Upper bound on the batched values of one run (float64-sized, all alive at once, which
overestimates onnxruntime's reuse of buffers). The Scan path holds one row's values; a
graph with large per-example values would make the batched run a memory risk instead,
so it is refused and runs in Scan."""


def _load(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and friends on hostile bytes
        raise WrapperBuildError(f"the package graph is not an ONNX model ({type(exc).__name__})") from None
    return model


def _unit_head(opset: int) -> tuple[list[onnx.NodeProto], str, str]:
    """Nodes that lay the run's rows out (:data:`ORDER`), mark the padding rows
    (:data:`PADDING`) and derive :data:`MASK` and :data:`BLOCKS` from :data:`SAME_UNIT`;
    with the laid-out ``x`` and ``y``.

    Each operator here replaces NumPy calls that every step would make (the layout's
    arrays are new each step): a few small operators cost less."""
    emitter = Emitter(opset, "", AGENT_PREFIX + "units::")
    emitter.op("Cast", [SAME_UNIT], MASK, to=DOUBLE)
    blocks = emitter.op("Slice", [emitter.op("Shape", [SAME_UNIT]), emitter.ints([0]), emitter.ints([2])])
    emitter.op("Concat", [blocks, emitter.ints([-1])], BLOCKS, axis=0)
    # Gather takes -1 as the last row: a padding row is a copy of a real row, its results
    # zeroed by PADDING (and row i of the package graph depends on row i alone).
    x = emitter.op("Gather", [X, ORDER], axis=0)
    y = emitter.op("Gather", [Y, ORDER], axis=0)
    padding = emitter.op("Less", [ORDER, emitter.constant(np.array(0, np.int64))])
    # Defence in depth: a position whose SAME_UNIT row is all false (no unit, not even itself)
    # would measure its unit's norm as 0 and pass unclipped; it counts as padding instead. The
    # layout never feeds one for a real row (UnitBlocks), and this holds if it ever did.
    alone = emitter.op("Equal", [_reduce(emitter, "ReduceMax", MASK, [2], keepdims=0), emitter.constant(np.array(0.0))])
    unmarked = emitter.op("Reshape", [alone, emitter.ints([-1])])
    emitter.op("Reshape", [emitter.op("Or", [padding, unmarked]), emitter.ints([-1, 1])], PADDING)
    return emitter.nodes, x, y


def _batch_size(emitter: Emitter, x: str) -> list[onnx.NodeProto]:
    """Nodes defining ``emitter.batch_size`` = ``Shape(x)[0:1]`` (placed before everything)."""
    shape, zero, one = (AGENT_PREFIX + name for name in ("rows_shape", "rows_start", "rows_end"))
    return [
        helper.make_node("Shape", [x], [shape], name=shape),
        helper.make_node("Constant", [], [zero], name=zero, value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Constant", [], [one], name=one, value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("Slice", [shape, zero, one], [emitter.batch_size], name=emitter.batch_size),
    ]


def _reduce(emitter: Emitter, op: str, value: str, axes: list[int], keepdims: int) -> str:
    """A reduction in the attribute or input form the opset requires."""
    if emitter.opset >= (13 if op == "ReduceSum" else 18):
        return emitter.op(op, [value, emitter.ints(axes)], keepdims=keepdims)
    return emitter.op(op, [value], axes=axes, keepdims=keepdims)


def _rows(emitter: Emitter, batched: BatchedGraph, name: str, size: int) -> str:
    """Package output ``name`` as ``[N, size]`` (an unbatched output is copied into every row)."""
    value = batched.outputs.get(name)
    if value is None:
        raise WrapperBuildError(f"the package graph has no output {name!r}")
    if math.prod(batched.output_shapes[name]) != size:
        # The Scan wrapper fails such a graph at run time; keep that behaviour there.
        raise BatchingRefused(f"output {name!r} does not have {size} elements")
    if name in batched.batched_outputs:
        return emitter.op("Reshape", [value, emitter.ints([0, size])])
    flat = emitter.op("Reshape", [value, emitter.ints([1, size])])
    return emitter.op("Expand", [flat, emitter.op("Concat", [emitter.batch_size, emitter.ints([size])], axis=0)])


def _flat_rows(emitter: Emitter, batched: BatchedGraph, names: Iterable[tuple[str, int]]) -> str:
    pieces = [_rows(emitter, batched, name, size) for name, size in names]
    joined = pieces[0] if len(pieces) == 1 else emitter.op("Concat", pieces, axis=1)
    # float64 from here on, as in the Scan wrapper.
    return emitter.op("Cast", [joined], to=DOUBLE)


@dataclass(frozen=True)
class _Outer:
    """A gradient the compiled graph computes per row as the outer product ``u_i v_i^T``:
    ``MatMul([N, F, 1], [N, 1, H])``, both operands batched."""

    u: str
    v: str
    rows: int
    cols: int


def _outer_product(batched: BatchedGraph, name: str, size: int) -> _Outer | None:
    """Whether package output ``name`` is such an outer product (through Identity nodes)."""
    producers = {output: node for node in batched.nodes for output in node.output}
    node = producers.get(batched.outputs.get(name, ""))
    while node is not None and node.op_type == "Identity":
        node = producers.get(node.input[0])
    if node is None or node.op_type != "MatMul" or len(node.input) != 2:
        return None
    u, v = (batched.layout.get(value) for value in node.input)
    if u is None or v is None or not (u[0] and v[0]) or len(u[1]) != 2 or len(v[1]) != 2:
        return None
    (rows, one_u), (one_v, cols) = u[1], v[1]
    if one_u != 1 or one_v != 1 or rows * cols != size:
        return None
    return _Outer(node.input[0], node.input[1], rows, cols)


def _clip_rows(emitter: Emitter, batched: BatchedGraph, layout: WrapperLayout, *, units: bool = False) -> str:
    """``sum_i clip(g_i)`` over the rows: the security-relevant tail, in float64.

    Per row: the global L2 norm over all gradients, zero if any value is NaN or infinite,
    scale ``C / max(norm, C)``; then the scaled rows are summed (the only operation across
    rows, and it is the agent's). A gradient that is a per-row outer product ``u_i v_i^T``
    (a weight gradient) is not materialised: its squared norm is ``|u_i|^2 |v_i|^2``
    exactly, it is non-finite exactly when ``u_i`` or ``v_i`` is or when the largest
    product overflows float32 (as the materialised float32 product would), and its
    clipped sum is ``(s * U)^T V``, one matrix product.

    With ``units`` the scale is the row's privacy unit's (:func:`_unit_scale`): the sum is
    over units of each unit's clipped gradient sum, a bad row counting as zeros.
    """
    zero = emitter.constant(np.array(0.0, np.float64))
    squares: list[str] = []
    overflows: list[str] = []
    pieces: list[tuple[str, str | None]] = []
    widths: list[tuple[int, int]] = []
    roots: list[tuple[str, str | None]] = []
    for slot in layout.slots:
        name = f"grad_{slot.name}"
        outer = _outer_product(batched, name, slot.size)
        if outer is None:
            dense = emitter.op("Cast", [_rows(emitter, batched, name, slot.size)], to=DOUBLE)
            squares.append(_reduce(emitter, "ReduceSumSquare", dense, [1], keepdims=1))
            pieces.append((dense, None))
            widths.append((slot.size, 0))
            roots.append((_root(batched, batched.outputs[name]), None))
            continue
        u = emitter.op("Cast", [emitter.op("Reshape", [outer.u, emitter.ints([0, outer.rows])])], to=DOUBLE)
        v = emitter.op("Cast", [emitter.op("Reshape", [outer.v, emitter.ints([0, outer.cols])])], to=DOUBLE)
        squares.append(
            emitter.op(
                "Mul",
                [
                    _reduce(emitter, "ReduceSumSquare", u, [1], keepdims=1),
                    _reduce(emitter, "ReduceSumSquare", v, [1], keepdims=1),
                ],
            )
        )
        largest = emitter.op(
            "Mul",
            [
                _reduce(emitter, "ReduceMax", emitter.op("Abs", [u]), [1], keepdims=1),
                _reduce(emitter, "ReduceMax", emitter.op("Abs", [v]), [1], keepdims=1),
            ],
        )
        overflows.append(
            emitter.op("GreaterOrEqual", [largest, emitter.constant(np.array(FLOAT32_OVERFLOW, np.float64))])
        )
        pieces.append((u, v))
        widths.append((outer.rows, outer.cols))
        roots.append((_root(batched, outer.u), _root(batched, outer.v)))
    total = squares[0] if len(squares) == 1 else emitter.op("Sum", squares)  # [N, 1]
    # NaN or +-Inf anywhere in a row makes its sum of squares NaN or Inf.
    bad = emitter.op("Or", [emitter.op("IsNaN", [total]), emitter.op("IsInf", [total])])
    for overflow in overflows:
        bad = emitter.op("Or", [bad, overflow])
    if units:
        # The padding rows that fill the blocks up count as zeros.
        bad = emitter.op("Or", [bad, PADDING])
    # Where, not a multiply: 0 * NaN is NaN.
    safe = [
        (emitter.op("Where", [bad, zero, first]), None if second is None else emitter.op("Where", [bad, zero, second]))
        for first, second in pieces
    ]
    if units:
        row_norms = emitter.op("Sqrt", [emitter.op("Where", [bad, zero, total])])  # [N, 1]
        scale = _unit_scale(emitter, _unit_squares(emitter, safe, widths, roots, row_norms))
    else:
        scale = _scale(emitter, total, bad)
    weights = emitter.op("Transpose", [scale], perm=[1, 0])  # [1, N]
    sums: list[str] = []
    for first, second in safe:
        if second is None:
            summed = emitter.op("MatMul", [weights, first])  # [1, size]
        else:
            scaled = emitter.op("Mul", [first, scale])
            summed = emitter.op("MatMul", [emitter.op("Transpose", [scaled], perm=[1, 0]), second])
        sums.append(emitter.op("Reshape", [summed, emitter.ints([-1])]))
    return sums[0] if len(sums) == 1 else emitter.op("Concat", sums, axis=0)


# How far the computed squared norm of a unit's summed piece may fall below its true value,
# relative to (Σ_i ‖g_i‖)² over the unit's rows (g_i: the row's piece): rounding in the k-by-k Gram sums, the dot
# products of r and c values and the final reduction, each at most n·2^-53 relative to
# the sum of absolute terms (Higham, "Accuracy and Stability", §3.1), with room to spare.
# Without it, rows built to cancel could make a large unit sum measure as small.
def _rounding_margin(widths: Sequence[tuple[int, int]]) -> float:
    # The longest dot product: a factor's, or the dense pieces' joined Gram matrix (their
    # widths together, cols 0), whichever is longer.
    longest = max(*(rows + cols for rows, cols in widths), sum(rows for rows, cols in widths if cols == 0))
    return float(longest + ROWS_PER_RUN * ROWS_PER_RUN + 64) * 2.0**-51


def _blocks(emitter: Emitter, values: str) -> str:
    """``values`` ``[N, w]`` as ``[blocks, B, w]`` (:data:`BLOCKS`)."""
    return emitter.op("Reshape", [values, BLOCKS])


def _gram(emitter: Emitter, stacked: str) -> str:
    """``[blocks, B, B]``: the dot products of the rows of each block of ``stacked`` ``[blocks, B, w]``."""
    return emitter.op("MatMul", [stacked, emitter.op("Transpose", [stacked], perm=[0, 2, 1])])


def _root(batched: BatchedGraph, value: str) -> str:
    """The value ``value`` reshapes: followed up through Identity, Reshape, (Un)Squeeze and
    Flatten, which keep each row's elements in order. Two pieces with one root hold the
    same values in every row (a bias gradient is its weight gradient's second factor)."""
    producers = {output: node for node in batched.nodes for output in node.output}
    node = producers.get(value)
    while node is not None and node.op_type in ("Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"):
        value = node.input[0]
        node = producers.get(value)
    return value


def _unit_squares(
    emitter: Emitter,
    pieces: Sequence[tuple[str, str | None]],
    widths: Sequence[tuple[int, int]],
    roots: Sequence[tuple[str, str | None]],
    row_norms: str,
) -> str:
    """``[N, 1]``: for each row, an upper bound on ``‖Σ_{i∈unit} g_i‖²``, the squared norm of
    its unit's summed gradient (``pieces`` with bad and padding rows zeroed, of ``widths``
    values per row, each the reshaped ``roots``; ``row_norms`` ``[N, 1]`` each row's norm
    over all pieces, zero likewise).

    Within a block, with ``S`` its "same unit" mask (:data:`MASK`): a dense piece's
    part is ``Σ_{i,j∈g} d_i·d_j``, its Gram matrix ``D Dᵀ`` masked by ``S``; an
    outer-product piece's unit sum ``U_gᵀ V_g`` is never materialised: its squared Frobenius
    norm is ``Σ_{i,j∈g} (U Uᵀ)_{ij} (V Vᵀ)_{ij}``, from the block's two Gram matrices masked
    by ``S``. A Gram matrix is computed once per root (a bias gradient reuses its weight
    gradient's factor's); dense pieces without a factor of their own share one, of their
    concatenation. The total is raised by :func:`_rounding_margin` times
    ``(Σ_{i∈g} ‖g_i‖)²``, at least ``Σ_pieces (Σ_{i∈g} ‖g_i^piece‖)²`` (Minkowski's
    inequality), to which the margin is relative: clipping by an upper bound keeps the
    unit's contribution within ``C`` whatever the rounding.
    """
    grams: dict[str, str] = {}

    def gram(value: str, root: str) -> str:
        if root not in grams:
            grams[root] = _gram(emitter, _blocks(emitter, value))
        return grams[root]

    products: list[str] = []
    for (first, second), (first_root, second_root) in zip(pieces, roots, strict=True):
        if second is not None and second_root is not None:
            products.append(emitter.op("Mul", [gram(first, first_root), gram(second, second_root)]))
    alone = [
        first for (first, second), (root, _) in zip(pieces, roots, strict=True) if second is None and root not in grams
    ]
    products += [
        grams[root] for (_, second), (root, _) in zip(pieces, roots, strict=True) if second is None and root in grams
    ]
    if alone:
        # The other dense pieces together: Σ_{i,j∈g} d_i·d_j, one Gram matrix of their concatenation.
        joined = alone[0] if len(alone) == 1 else emitter.op("Concat", alone, axis=1)
        products.append(_gram(emitter, _blocks(emitter, joined)))
    # The rounding margin as one more product: Σ_{i,j∈g} m·n_i·n_j is m·(Σ_{i∈g} ‖g_i‖)².
    margin = emitter.constant(np.array(_rounding_margin(widths), np.float64))
    products.append(emitter.op("Mul", [margin, _gram(emitter, _blocks(emitter, row_norms))]))
    masked = emitter.op("Mul", [MASK, emitter.op("Sum", products)])
    total = emitter.op("MatMul", [MASK, _reduce(emitter, "ReduceSum", masked, [2], keepdims=1)])  # [blocks, B, 1]
    return emitter.op("Reshape", [total, emitter.ints([-1, 1])])


def _scale(emitter: Emitter, squares: str, bad: str) -> str:
    """``C / max(sqrt(squares), C)``, the clipping scale (``min(1, C / norm)`` without a
    division by 0); 0 where ``bad``."""
    zero = emitter.constant(np.array(0.0, np.float64))
    norm = emitter.op("Sqrt", [emitter.op("Where", [bad, zero, squares])])
    return emitter.op("Where", [bad, zero, emitter.op("Div", [CLIP_NORM, emitter.op("Max", [norm, CLIP_NORM])])])


def _unit_scale(emitter: Emitter, squares: str) -> str:
    """``[N, 1]``: each row's unit's clipping scale ``C / max(‖Σ_{i∈unit} g_i‖, C)`` from the
    squared norms ``[N, 1]`` (:func:`_unit_squares`); a unit whose squared norm is not finite
    gets scale 0."""
    return _scale(emitter, squares, emitter.op("Or", [emitter.op("IsNaN", [squares]), emitter.op("IsInf", [squares])]))


def _live(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """``nodes`` that the ``outputs`` depend on (a materialised gradient the tail replaced
    by its factors is not computed at all)."""
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    return kept[::-1]


def _metric_rows(emitter: Emitter, m: str, manifest: Manifest, *, units: bool = False) -> str:
    """Sum over rows of each metric, made finite and clamped into its range; with
    ``units``, each row weighted by one over its unit's row count (the sum of the units' means)."""
    zero = emitter.constant(np.array(0.0, np.float64))
    low = emitter.constant(np.array([metric.low for metric in manifest.metrics], np.float64))
    high = emitter.constant(np.array([metric.high for metric in manifest.metrics], np.float64))
    bad = emitter.op("Or", [emitter.op("IsNaN", [m]), emitter.op("IsInf", [m])])
    finite = emitter.op("Where", [bad, zero, m])
    clamped = emitter.op("Min", [emitter.op("Max", [finite, low]), high])
    clamped = bounded_metric_groups(
        emitter.op,
        emitter.constant,
        clamped,
        len(manifest.metrics),
        manifest.metric_groups,
    )
    if units:
        one = emitter.constant(np.array(1.0, np.float64))
        # Each real row weighs one over its unit's real rows: the sum of the units' means.
        real = emitter.op("Cast", [emitter.op("Not", [PADDING])], to=DOUBLE)  # [N, 1]
        unit_rows = _reduce(emitter, "ReduceSum", MASK, [2], keepdims=1)  # [blocks, B, 1]
        # Padding rows (of no unit) divide 0 by 1.
        counted = emitter.op("Max", [emitter.op("Reshape", [unit_rows, emitter.ints([-1, 1])]), one])
        weight = emitter.op("Div", [real, counted])
        clamped = emitter.op("Mul", [clamped, weight])
    return _reduce(emitter, "ReduceSum", clamped, [0], keepdims=0)


def _checked(model: onnx.ModelProto, batched: BatchedGraph) -> onnx.ModelProto:
    check_layout(model, batched.layout)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, ...
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BatchingRefused(f"the batched graph fails onnx.checker: {first_line[:300]}") from None
    return model


def build_batched_wrapper(
    graph_onnx: bytes, manifest: Manifest, role: GraphRole, *, units: bool = False
) -> onnx.ModelProto:
    """The checked batched wrapper for the package's grad (or eval) graph.

    With ``units``, rows are grouped by privacy unit, laid out in blocks no unit crosses
    (inputs :data:`ORDER`, :data:`SAME_UNIT`), and the sum is over units: a
    unit's gradient rows summed, then clipped; a unit's metrics averaged
    (:mod:`agent.runtime.contribution` has the rules).

    Raises :class:`BatchingRefused` when the compiler cannot batch the graph, and
    :class:`WrapperBuildError` when the graph does not fit the manifest at all.
    """
    package_model = _load(graph_onnx)
    layout = layout_for(manifest, role)
    if layout.size == 0:
        raise WrapperBuildError("the manifest declares nothing for this graph to produce")
    feeds = {p.name: parameter_input(p.name) for p in manifest.parameters} | {"x": X, "y": Y}
    declared = {value.name for value in package_model.graph.input}
    if declared != set(feeds):
        raise WrapperBuildError(f"the package graph's inputs {sorted(declared)[:20]} differ from the manifest's")
    emitter = Emitter(0, AGENT_PREFIX + "rows", AGENT_PREFIX + "tail::")
    batched = batch_graph(package_model, ROW_INPUTS, emitter.batch_size)
    emitter.opset = batched.opset
    head: list[onnx.NodeProto] = []
    if units:
        head, laid_x, laid_y = _unit_head(batched.opset)
        feeds |= {"x": laid_x, "y": laid_y}
    head += _batch_size(emitter, feeds["x"])
    head += [
        helper.make_node("Identity", [source], [batched.inputs[name]], name=f"{AGENT_PREFIX}feed::{name}")
        for name, source in feeds.items()
    ]
    if role is GraphRole.GRADIENT:
        emitter.op("Identity", [_clip_rows(emitter, batched, layout, units=units)], SUM)
    else:
        flat = _flat_rows(emitter, batched, [(slot.name, 1) for slot in layout.slots])
        emitter.op("Identity", [_metric_rows(emitter, flat, manifest, units=units)], SUM)
    nodes = _live([*head, *batched.nodes, *emitter.nodes], [SUM])
    # Only what is computed counts: a weight gradient the tail takes as its factors
    # (u, v) is never materialised, however large the weight.
    computed = {name for node in nodes for name in (*node.input, *node.output)}
    batched_elements = sum(
        math.prod(shape) for name, (is_batched, shape) in batched.layout.items() if is_batched and name in computed
    )
    # With units a run of ROWS_PER_RUN rows takes more positions: first-fit decreasing fills
    # every block but one more than half, so fewer than 2 * rows + one block <= 3 * rows.
    positions = (3 if units else 1) * ROWS_PER_RUN
    if batched_elements * positions * 8 > MAX_BATCHED_BYTES:
        raise BatchingRefused(f"per-example values of {batched_elements} elements are too large to batch")

    label = INT64 if manifest.label.dtype == "int64" else FLOAT
    inputs = [helper.make_tensor_value_info(parameter_input(p.name), FLOAT, list(p.shape)) for p in manifest.parameters]
    rows = RUN_ROWS if units else BATCH_DIM
    inputs += [
        helper.make_tensor_value_info(X, FLOAT, [rows, manifest.num_features]),
        helper.make_tensor_value_info(Y, label, [rows, *manifest.label.shape]),
    ]
    if units:
        inputs += [
            helper.make_tensor_value_info(ORDER, INT64, [BATCH_DIM]),
            helper.make_tensor_value_info(SAME_UNIT, TensorProto.BOOL, ["blocks", "block", "block"]),
        ]
    if role is GraphRole.GRADIENT:
        inputs.append(helper.make_tensor_value_info(CLIP_NORM, DOUBLE, []))
    graph = helper.make_graph(
        nodes,
        AGENT_PREFIX + "batched_wrapper",
        inputs,
        [helper.make_tensor_value_info(SUM, DOUBLE, [layout.size])],
        initializer=list(batched.initializers),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", batched.opset)],
        ir_version=max(package_model.ir_version, 7),
        producer_name="edge-agent.runtime.batched_wrapper",
    )
    return _checked(model, batched)
