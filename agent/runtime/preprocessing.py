"""The manifest's declared preprocessing, vectorised over Arrow record batches.

:func:`check_schema` decides once per task whether each column the package reads can
feed its declaration (a typed error names the first column that cannot);
:func:`to_arrays` turns one record batch into the graphs' ``x`` and ``y`` with Arrow
compute kernels and NumPy, never a Python loop over rows.

Accepted Arrow types (dictionary-encoded columns are judged by their value type):

* ``none`` / ``standardise`` of a numeric declaration: any integer or floating type
  (the value is read as float64 first, so int64 CSV columns feed a float64 declaration);
  ``none`` of a ``bool`` declaration: bool (1.0 / 0.0);
* ``one_hot``: string-like columns for string categories, integer columns for integer
  categories, bool columns for bool categories;
* labels: ``binary`` numeric or bool, ``regression`` numeric, ``class_index`` integer,
  ``survival`` numeric time and numeric or bool event (``y = (time, event)``).

A missing value never reaches a graph: a null, and in a floating column NaN or an
infinity too, which is how pandas, Spark and R often write a value that was not measured.
By default the row is dropped (:func:`drop_rows_with_nulls` over
``Manifest.required_columns``), so the rows a task can use, which the cohort minimum
counts, are the rows that contribute something. A feature whose manifest declares
``missing`` (:class:`agent.packages.manifest.Missing`) feeds the declared value instead,
and with ``indicator`` one more slot, 1.0 where the value was missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from agent.packages.manifest import (
    ColumnType,
    FeatureDecl,
    LabelKind,
    Manifest,
    Missing,
    NoPreprocessing,
    OneHot,
    Standardise,
)
from agent.runtime.errors import ColumnMissingError, ColumnTypeError

Float32Array = npt.NDArray[np.float32]


def _value_type(arrow_type: pa.DataType) -> pa.DataType:
    return arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type


def _is_numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t))


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _feature_accepts(feature: FeatureDecl, t: pa.DataType) -> bool:
    pre = feature.preprocessing
    if isinstance(pre, OneHot):
        if feature.dtype is ColumnType.STRING:
            return _is_string(t)
        if feature.dtype is ColumnType.BOOL:
            return bool(pa.types.is_boolean(t))
        return bool(pa.types.is_integer(t))
    if feature.dtype is ColumnType.BOOL:
        return bool(pa.types.is_boolean(t))
    return _is_numeric(t)


def _label_requirements(manifest: Manifest) -> list[tuple[str, str]]:
    """(column, wanted kind) for the label columns: ``numeric``, ``numeric_or_bool``, ``integer``."""
    label = manifest.label
    if label.kind is LabelKind.SURVIVAL:
        return [(str(label.time_column), "numeric"), (str(label.event_column), "numeric_or_bool")]
    wanted = {LabelKind.BINARY: "numeric_or_bool", LabelKind.REGRESSION: "numeric", LabelKind.CLASS_INDEX: "integer"}
    return [(str(label.column), wanted[label.kind])]


def _label_accepts(wanted: str, t: pa.DataType) -> bool:
    if wanted == "integer":
        return bool(pa.types.is_integer(t))
    if wanted == "numeric_or_bool":
        return _is_numeric(t) or bool(pa.types.is_boolean(t))
    return _is_numeric(t)


def check_schema(schema: pa.Schema, manifest: Manifest) -> None:
    """Raises :class:`ColumnMissingError` / :class:`ColumnTypeError` naming the first
    column of ``manifest.columns`` the dataset cannot provide."""
    for feature in manifest.features:
        t = _field_type(schema, feature.column)
        if not _feature_accepts(feature, t):
            raise ColumnTypeError(
                feature.column,
                f"Arrow type {t} cannot feed a {feature.dtype.value} column"
                f" with {feature.preprocessing.kind} preprocessing",
            )
    for column, wanted in _label_requirements(manifest):
        t = _field_type(schema, column)
        if not _label_accepts(wanted, t):
            raise ColumnTypeError(column, f"Arrow type {t} cannot feed a {manifest.label.kind.value} label ({wanted})")


def _field_type(schema: pa.Schema, column: str) -> pa.DataType:
    index = schema.get_field_index(column)
    if index < 0:
        # get_field_index is -1 for missing and for duplicated names alike.
        problem = "is listed twice in the dataset" if column in schema.names else "is not in the dataset"
        raise ColumnMissingError(column, problem)
    return _value_type(schema.field(index).type)


def _decoded(column: Any) -> Any:
    """A dictionary-encoded column as its plain values (other columns unchanged)."""
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def _usable(batch: pa.RecordBatch, columns: tuple[str, ...]) -> Any:
    """A boolean mask of the rows with a value (not null, and finite if floating) in every one of
    ``columns``; None when every row has."""
    valid: Any = None
    for name in columns:
        column = _decoded(batch.column(name))
        if pa.types.is_floating(column.type):
            ok = pc.fill_null(pc.is_finite(column), False)
        elif column.null_count == 0:
            continue
        else:
            ok = pc.is_valid(column)
        valid = ok if valid is None else pc.and_(valid, ok)
    return valid


def drop_rows_with_nulls(batch: pa.RecordBatch, columns: tuple[str, ...]) -> pa.RecordBatch:
    """``batch`` without the rows missing a value (null, or NaN/infinite if floating) in any of
    ``columns`` (the package format promises such rows are not fed to a graph)."""
    valid = _usable(batch, columns)
    return batch if valid is None else batch.filter(valid)


def split_usable(batch: pa.RecordBatch, columns: tuple[str, ...]) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """``(kept, dropped)``: the rows :func:`drop_rows_with_nulls` keeps, and the others (for a
    caller that counts whose rows were dropped: agent.runtime.unit_rows)."""
    valid = _usable(batch, columns)
    if valid is None:
        return batch, batch.slice(0, 0)
    return batch.filter(valid), batch.filter(pc.invert(valid))


def count_usable(batch: pa.RecordBatch, columns: tuple[str, ...]) -> int:
    """How many rows :func:`drop_rows_with_nulls` keeps."""
    valid = _usable(batch, columns)
    return batch.num_rows if valid is None else int(valid.true_count)


def _float64(column: Any) -> npt.NDArray[np.float64]:
    # safe=False: int64 values beyond 2**53 round to the nearest float instead of failing.
    values: npt.NDArray[np.float64] = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return values


def _one_hot(column: Any, pre: OneHot, dtype: ColumnType) -> Float32Array:
    value_type: pa.DataType
    if dtype is ColumnType.STRING:
        value_type = pa.large_string()
    elif dtype is ColumnType.BOOL:
        value_type = pa.bool_()
    else:
        value_type = pa.int64()
    values = pc.cast(column, value_type, safe=False)
    index: Any = pc.index_in(values, value_set=pa.array(list(pre.categories), type=value_type))
    positions: npt.NDArray[np.int32] = pc.fill_null(index, -1).to_numpy(zero_copy_only=False)
    # Values outside the categories have position -1 and so give an all-zero slot.
    return np.equal(positions[:, None], np.arange(len(pre.categories))).astype(np.float32)


def _numeric(column: Any, missing: Missing) -> npt.NDArray[np.float64]:
    """The column as float64, a missing value (null, NaN, ±inf) replaced by the imputed one."""
    values = _float64(column)
    if missing.impute:
        values = np.where(np.isfinite(values), values, missing.value)
    return values


def _is_missing(batch: pa.RecordBatch, column: str) -> npt.NDArray[np.bool_]:
    """Where ``column`` has no value, as :func:`drop_rows_with_nulls` judges it."""
    valid = _usable(batch, (column,))
    if valid is None:
        return np.zeros(batch.num_rows, np.bool_)
    present: npt.NDArray[np.bool_] = np.asarray(valid.to_numpy(zero_copy_only=False), dtype=np.bool_)
    return ~present


def features(batch: pa.RecordBatch, manifest: Manifest) -> Float32Array:
    """``x`` float32 ``[rows, F]`` for a batch without missing values in ``manifest.required_columns``."""
    x = np.empty((batch.num_rows, manifest.num_features), np.float32)
    start = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for feature in manifest.features:
            column = _decoded(batch.column(feature.column))
            pre = feature.preprocessing
            if isinstance(pre, OneHot):
                x[:, start : start + pre.width] = _one_hot(column, pre, feature.dtype)
            elif isinstance(pre, Standardise):
                x[:, start] = ((_numeric(column, feature.missing) - pre.mean) / pre.std).astype(np.float32)
            elif isinstance(pre, NoPreprocessing):
                x[:, start] = _numeric(column, feature.missing).astype(np.float32)
            start += pre.width
            if feature.missing.indicator:
                x[:, start] = _is_missing(batch, feature.column).astype(np.float32)
                start += 1
    return x


def labels(batch: pa.RecordBatch, manifest: Manifest) -> npt.NDArray[Any]:
    """``y`` in the label's dtype, ``[rows, *label shape]``."""
    label = manifest.label
    with np.errstate(over="ignore", invalid="ignore"):
        if label.kind is LabelKind.SURVIVAL:
            time = _float64(_decoded(batch.column(str(label.time_column))))
            event = _float64(_decoded(batch.column(str(label.event_column))))
            return np.stack([time, event], axis=1).astype(np.float32)
        column = _decoded(batch.column(str(label.column)))
        if label.kind is LabelKind.CLASS_INDEX:
            as_int: npt.NDArray[np.int64] = pc.cast(column, pa.int64(), safe=False).to_numpy(zero_copy_only=False)
            return as_int
        return _float64(column).astype(np.float32)


def to_arrays(batch: pa.RecordBatch, manifest: Manifest) -> tuple[Float32Array, npt.NDArray[Any]]:
    """``(x, y)`` for the rows of ``batch`` with a value in every required column."""
    usable = drop_rows_with_nulls(batch, manifest.required_columns)
    return features(usable, manifest), labels(usable, manifest)
