"""An inference model that scores raw patient columns: the manifest's preprocessing, in ONNX.

A package's ``model.onnx`` takes ``x``, the matrix the agent builds from the dataset's
columns (:mod:`agent.runtime.preprocessing`): each feature in manifest order,
standardised or one-hot encoded as declared. Scoring a new patient with it means
redoing that by hand, and a wrong column order silently gives wrong risks.
:func:`scoring_model` puts the same preprocessing in front of the model, so that it takes
one named input per feature column instead:

* a numeric column (``none`` or ``standardise``): float64 ``[N]``, read as the agent
  reads it (float64, standardised in float64, then float32);
* a ``bool`` column without preprocessing: bool ``[N]`` (1.0 / 0.0);
* a one-hot column: string, int64 or bool ``[N]`` as its categories are, encoded by
  ``ai.onnx.ml.OneHotEncoder``: a value outside the categories gives all zeros, as in
  the agent.

A numeric column whose manifest declares how a missing value is imputed
(:class:`agent.packages.manifest.Missing`) takes NaN (or an infinity) for a missing value
here: it is replaced by the declared value, and with ``indicator`` the extra slot is 1.0,
as in the agent. A one-hot column whose missing value is a category of its own takes a
second input, ``missing::COLUMN`` (bool ``[N]``), true where the value is missing: its
category slots are then 0 whatever the column's input holds, and the indicator 1 (a
string, integer or bool input has no NaN to say so). Otherwise the agent trains only on
rows with a value (a null, NaN or infinity in such a column drops the row), and a NaN
passed here gives a NaN score, not a guess.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.packages.manifest import ColumnType, FeatureDecl, Manifest, OneHot, Standardise

PREFIX = "preprocess::"
MISSING = "missing::"
"""The prefix of a one-hot column's second input, its missing flags (see the module docstring)."""
ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 2
_MATRIX = PREFIX + "x"


class ScoringModelError(ValueError):
    """The inference model cannot take the manifest's preprocessing (its input is not ``x``)."""


def input_type(feature: FeatureDecl) -> int:
    """The ONNX element type of the scoring model's input for ``feature``."""
    if isinstance(feature.preprocessing, OneHot) or feature.dtype is ColumnType.BOOL:
        return {ColumnType.STRING: TensorProto.STRING, ColumnType.BOOL: TensorProto.BOOL}.get(
            feature.dtype, TensorProto.INT64
        )
    return TensorProto.DOUBLE


def missing_input(feature: FeatureDecl) -> str | None:
    """The name of ``feature``'s missing flags input: a one-hot column whose missing value is a
    category of its own has one; any other column has none."""
    if isinstance(feature.preprocessing, OneHot) and feature.missing.indicator:
        return MISSING + feature.column
    return None


def scoring_model(inference: onnx.ModelProto, manifest: Manifest) -> onnx.ModelProto:
    """``inference`` (input ``x`` float32 ``[N, F]``) behind the manifest's preprocessing:
    one input per feature column, by the column's name (and the missing flags of a one-hot
    column that keeps missing values: :func:`missing_input`), checked with onnx.checker."""
    names = [value.name for value in inference.graph.input]
    if names != ["x"]:
        raise ScoringModelError(f"the inference model's inputs are {names}, not one input named x")
    flags = [name for name in map(missing_input, manifest.features) if name is not None]
    columns = [feature.column for feature in manifest.features]
    if len(set(columns)) != len(columns):
        raise ScoringModelError("a feature column is listed twice; its preprocessing cannot become one input")
    taken = sorted(set(columns) & set(flags))
    if taken:
        raise ScoringModelError(f"the feature column {taken[0]!r} has the name of another column's missing flags")
    columns += flags
    outputs = {value.name for value in inference.graph.output}
    clash = sorted(set(columns) & outputs)
    if clash:
        raise ScoringModelError(f"the feature column {clash[0]!r} has the name of the inference model's output")
    model = onnx.ModelProto()
    model.CopyFrom(inference)
    graph = model.graph
    # The model's own x, and any value of its own a feature column is named like (a weight
    # called "weight", an intermediate "add_2"), become inner names: the columns are the inputs.
    defined = {"x"} | {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    renamed = {name: f"{PREFIX}model::{name}" for name in defined & set(columns)} | {"x": _MATRIX}
    _rename(graph, renamed)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    nodes: list[onnx.NodeProto] = []
    slots = [
        _encoded(feature, f"{PREFIX}{index}::", nodes, graph, opset) for index, feature in enumerate(manifest.features)
    ]
    nodes.append(helper.make_node("Concat", slots, [_MATRIX], name=PREFIX + "concat", axis=1))
    inner = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *inner])
    del graph.input[:]
    graph.input.extend(
        helper.make_tensor_value_info(feature.column, input_type(feature), ["N"]) for feature in manifest.features
    )
    graph.input.extend(helper.make_tensor_value_info(name, TensorProto.BOOL, ["N"]) for name in flags)
    if not any(opset.domain == ML_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    onnx.checker.check_model(model, full_check=True)
    return model


def _rename(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    """Every value of ``graph`` named in ``renamed`` (an initializer, a node's output) under its
    new name, and every use of it (:func:`_uses`)."""
    for initializer in graph.initializer:
        initializer.name = renamed.get(initializer.name, initializer.name)
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)
    for node in graph.node:
        node.output[:] = [renamed.get(name, name) for name in node.output]
    _uses(graph, renamed)


def _uses(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    """The uses in ``graph``'s nodes of the values in ``renamed``, renamed; in subgraphs (If,
    Loop, Scan bodies) too, except where a subgraph defines a value of that name itself."""
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                local = {v.name for v in body.input} | {i.name for i in body.initializer}
                local |= {o for n in body.node for o in n.output}
                outer = {old: new for old, new in renamed.items() if old not in local}
                if outer:
                    _uses(body, outer)


def _encoded(feature: FeatureDecl, prefix: str, nodes: list[onnx.NodeProto], graph: onnx.GraphProto, opset: int) -> str:
    """Appends to ``nodes`` what turns the column ``feature.column`` into its float32 slots
    ``[N, width]`` (constants into ``graph``'s initializers); returns the slots' name."""

    def constant(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, prefix + name))
        return prefix + name

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [prefix + output], name=prefix + output, **attributes))
        return prefix + output

    pre = feature.preprocessing
    if isinstance(pre, OneHot):
        column = feature.column
        if feature.dtype is ColumnType.STRING:
            strings = [str(c) for c in pre.categories]
            encoded = node("OneHotEncoder", [column], "one_hot", domain=ML_DOMAIN, cats_strings=strings)
        else:
            if feature.dtype is ColumnType.BOOL:
                column = node("Cast", [column], "as_int", to=TensorProto.INT64)
            integers = [int(c) for c in pre.categories]
            encoded = node("OneHotEncoder", [column], "one_hot", domain=ML_DOMAIN, cats_int64s=integers)
        flags = missing_input(feature)
        if flags is None:
            return encoded
        # A missing value: no category (whatever the column's input holds there), the indicator 1.
        present = node("Cast", [node("Not", [flags], "present")], "present_float", to=TensorProto.FLOAT)
        kept = node("Mul", [encoded, _column(present, "present_column", node, constant, opset)], "kept")
        flag = _column(node("Cast", [flags], "missing_float", to=TensorProto.FLOAT), "indicator", node, constant, opset)
        return node("Concat", [kept, flag], "slots", axis=1)
    value = node("Cast", [feature.column], "float64", to=TensorProto.DOUBLE)
    missing = ""
    if feature.missing.impute:
        # Missing as the agent judges it in a float column: NaN or an infinity.
        missing = node("Or", [node("IsNaN", [value], "is_nan"), node("IsInf", [value], "is_inf")], "missing")
        imputed = constant("imputed_value", np.array(feature.missing.value, np.float64))
        value = node("Where", [missing, imputed, value], "imputed")
    if isinstance(pre, Standardise):
        value = node("Sub", [value, constant("mean", np.array(pre.mean, np.float64))], "centred")
        value = node("Div", [value, constant("std", np.array(pre.std, np.float64))], "standardised")
    value = node("Cast", [value], "float32", to=TensorProto.FLOAT)
    slot = _column(value, "slot", node, constant, opset)
    if not feature.missing.indicator:
        return slot
    flag = _column(node("Cast", [missing], "missing_float", to=TensorProto.FLOAT), "indicator", node, constant, opset)
    return node("Concat", [slot, flag], "slots", axis=1)


def _column(
    value: str,
    output: str,
    node: Callable[..., str],
    constant: Callable[[str, np.ndarray], str],
    opset: int,
) -> str:
    """``value`` ``[N]`` as a column ``[N, 1]``."""
    if opset >= 13:
        return node("Unsqueeze", [value, constant(output + "_axis", np.array([1], np.int64))], output)
    return node("Unsqueeze", [value], output, axes=[1])
