"""The exported model scores raw columns (edge_sponsor.publisher.raw_columns): one input per
feature column, by name, preprocessed exactly as the agent preprocesses a dataset
(agent.runtime.preprocessing), so a model trained at the hospitals scores a new patient
without hand-written preprocessing."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.errors import PackageRejected
from agent.packages.manifest import Manifest, parse_manifest
from agent.runtime.preprocessing import features
from edge_sponsor.publisher.packaging import FeatureColumn, complete_manifest, zoo_graphs, zoo_manifest_fields
from edge_sponsor.publisher.raw_columns import ScoringModelError, scoring_model
from edge_sponsor.publisher.zoo import build_logistic_regression

COLUMNS = (
    FeatureColumn("x", "float64", "standardise", mean=61.5, std=12.25),  # a column called x, like the model's input
    FeatureColumn("sex", "string", "one_hot", categories=("F", "M")),
    FeatureColumn("stage", "int64", "one_hot", categories=(1, 2, 3)),
    FeatureColumn("smoker", "bool", "one_hot", categories=(True, False)),
    FeatureColumn("bmi", "float32"),
    FeatureColumn("treated", "bool"),
)
WIDTH = 1 + 2 + 3 + 2 + 1 + 1


def _package() -> tuple[Manifest, onnx.ModelProto]:
    model = build_logistic_regression(WIDTH)
    fields = zoo_manifest_fields(
        model, name="acme/risk", version="1.0.0", publisher="acme", features=COLUMNS, label_columns=["outcome"]
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, zoo_graphs(model)))))
    weights = np.linspace(-1.5, 1.5, WIDTH).astype(np.float32)
    return manifest, model.inference_model({"w": weights, "b": np.array(0.25, np.float32)})


MANIFEST, INFERENCE = _package()
SCORING = ort.InferenceSession(scoring_model(INFERENCE, MANIFEST).SerializeToString())
MATRIX = ort.InferenceSession(INFERENCE.SerializeToString())


def _both(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The agent's way (its preprocessing, then the matrix model) and the raw-column model's."""
    (expected,) = MATRIX.run(None, {"x": features(table.to_batches()[0], MANIFEST)})
    (got,) = SCORING.run(None, _raw(table))
    return expected, got


def _raw(table: pa.Table, first: str = "x") -> dict[str, np.ndarray]:
    """The table's columns as the scoring model's inputs (the first feature column called ``first``)."""
    return {
        first: table["x"].to_numpy().astype(np.float64),
        "sex": np.array(table["sex"].to_pylist(), object),
        "stage": table["stage"].to_numpy().astype(np.int64),
        "smoker": table["smoker"].to_numpy(zero_copy_only=False).astype(bool),
        "bmi": table["bmi"].to_numpy().astype(np.float64),
        "treated": table["treated"].to_numpy(zero_copy_only=False).astype(bool),
    }


def _table(rows: list[tuple[float, str, int, bool, float, bool]]) -> pa.Table:
    x, sex, stage, smoker, bmi, treated = zip(*rows, strict=True)
    return pa.table(
        {
            "x": pa.array(x, pa.float64()),
            "sex": pa.array(sex, pa.string()),
            "stage": pa.array(stage, pa.int64()),
            "smoker": pa.array(smoker, pa.bool_()),
            "bmi": pa.array(bmi, pa.float32()),
            "treated": pa.array(treated, pa.bool_()),
        }
    )


def test_the_inputs_are_the_feature_columns_by_name_and_type() -> None:
    assert [(i.name, i.type) for i in SCORING.get_inputs()] == [
        ("x", "tensor(double)"),
        ("sex", "tensor(string)"),
        ("stage", "tensor(int64)"),
        ("smoker", "tensor(bool)"),
        ("bmi", "tensor(double)"),
        ("treated", "tensor(bool)"),
    ]


def test_values_outside_the_categories_score_as_the_agent_scores_them() -> None:
    rows = [(40.0, "F", 1, True, 22.5, False), (80.0, "X", 7, False, 31.0, True), (61.5, "", -1, True, 0.0, True)]
    expected, got = _both(_table(rows))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-1e6, 1e6),
            st.sampled_from(["F", "M", "f", "other"]),
            st.integers(-5, 5),
            st.booleans(),
            st.floats(-1e4, 1e4, width=32),
            st.booleans(),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_any_raw_rows_score_exactly_as_the_agent_preprocesses_them(
    rows: list[tuple[float, str, int, bool, float, bool]],
) -> None:
    expected, got = _both(_table(rows))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_a_missing_column_at_scoring_time_is_named() -> None:
    raw = {"x": np.zeros(2), "sex": np.array(["F", "M"], object), "stage": np.ones(2, np.int64)}
    with pytest.raises(Exception, match="smoker"):
        SCORING.run(None, raw)


def test_an_inference_model_without_an_x_input_is_refused() -> None:
    renamed = onnx.ModelProto()
    renamed.CopyFrom(INFERENCE)
    renamed.graph.input[0].name = "features"
    with pytest.raises(ScoringModelError, match="not one input named x"):
        scoring_model(renamed, MANIFEST)


@pytest.mark.parametrize("column", ["w", "b", "add_2", "x"])
def test_a_column_named_like_a_value_of_the_model_scores_as_any_other(column: str) -> None:
    """A weight, an intermediate value or the model's own x may share a feature column's
    name (a PyTorch export's "weight"): the model's values are renamed, not the column."""
    inner = {o for n in INFERENCE.graph.node for o in n.output} | {i.name for i in INFERENCE.graph.initializer}
    assert column in inner | {"x"}
    renamed_columns = tuple(
        FeatureColumn(column, "float64", "standardise", mean=61.5, std=12.25) if c.column == "x" else c for c in COLUMNS
    )
    model = build_logistic_regression(WIDTH)
    fields = zoo_manifest_fields(
        model, name="acme/risk", version="1.0.0", publisher="acme", features=renamed_columns, label_columns=["outcome"]
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, zoo_graphs(model)))))
    scoring = ort.InferenceSession(scoring_model(INFERENCE, manifest).SerializeToString())
    rows = [(40.0, "F", 1, True, 22.5, False), (80.0, "M", 3, False, 31.0, True)]
    table = _table(rows)
    (expected,) = MATRIX.run(
        None,
        {
            "x": features(
                table.rename_columns([column if n == "x" else n for n in table.column_names]).to_batches()[0], manifest
            )
        },
    )
    (got,) = scoring.run(None, _raw(table, column))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_a_column_named_like_the_models_output_is_refused() -> None:
    renamed_columns = tuple(
        FeatureColumn("probability", "float64", "standardise", mean=61.5, std=12.25) if c.column == "x" else c
        for c in COLUMNS
    )
    model = build_logistic_regression(WIDTH)
    fields = zoo_manifest_fields(
        model, name="acme/risk", version="1.0.0", publisher="acme", features=renamed_columns, label_columns=["outcome"]
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, zoo_graphs(model)))))
    with pytest.raises(ScoringModelError, match="'probability' has the name of the inference model's output"):
        scoring_model(INFERENCE, manifest)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from([np.nan, np.inf, -np.inf]), st.floats(-1e3, 1e3)),
            st.one_of(st.none(), st.floats(10, 60, width=32)),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_imputed_columns_score_missing_values_as_the_agent_imputes_them(rows: list[tuple[float | None, ...]]) -> None:
    """A declared imputation (age: value 61.5 with an indicator; bmi: 27, no indicator) in the
    exported model equals the agent's own preprocessing, a null passed as NaN."""
    columns = (
        FeatureColumn("age", "float64", "standardise", mean=50.0, std=10.0, impute=61.5, indicator=True),
        FeatureColumn("bmi", "float32", impute=27.0),
    )
    model = build_logistic_regression(3)
    fields = zoo_manifest_fields(
        model, name="acme/risk", version="1.0.0", publisher="acme", features=columns, label_columns=["outcome"]
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, zoo_graphs(model)))))
    assert [f.missing.indicator for f in manifest.features] == [True, False] and manifest.num_features == 3
    inference = model.inference_model({"w": np.array([0.8, -1.2, 0.3], np.float32), "b": np.array(0.1, np.float32)})
    age, bmi = zip(*rows, strict=True)
    table = pa.table({"age": pa.array(age, pa.float64()), "bmi": pa.array(bmi, pa.float32())})
    (expected,) = ort.InferenceSession(inference.SerializeToString()).run(
        None, {"x": features(table.to_batches()[0], manifest)}
    )
    raw = {name: table[name].to_numpy(zero_copy_only=False).astype(np.float64) for name in ("age", "bmi")}
    scoring = ort.InferenceSession(scoring_model(inference, manifest).SerializeToString())
    (got,) = scoring.run(None, raw)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_a_feature_column_refuses_an_indicator_without_a_value_and_imputing_a_category() -> None:
    with pytest.raises(ValueError, match="a missing indicator needs an imputed value"):
        FeatureColumn("age", "float64", indicator=True)
    with pytest.raises(ValueError, match="numeric columns only"):
        FeatureColumn("sex", "string", "one_hot", categories=("F",), impute=0.0)


_CATEGORICAL = (
    FeatureColumn("sex", "string", "one_hot", categories=("F", "M"), indicator=True),
    FeatureColumn("stage", "int64", "one_hot", categories=(1, 2, 3), indicator=True),
    FeatureColumn("smoker", "bool", "one_hot", categories=(True,), indicator=True),
    FeatureColumn("grade", "int64", "one_hot", categories=(1, 2)),  # no indicator: a missing grade drops the row
)


def _categorical_package() -> tuple[Manifest, onnx.ModelProto]:
    model = build_logistic_regression(3 + 4 + 2 + 2)
    fields = zoo_manifest_fields(
        model, name="acme/risk", version="1.0.0", publisher="acme", features=_CATEGORICAL, label_columns=["outcome"]
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, zoo_graphs(model)))))
    weights = np.linspace(-1.0, 2.0, manifest.num_features).astype(np.float32)
    return manifest, model.inference_model({"w": weights, "b": np.array(-0.5, np.float32)})


CATEGORICAL_MANIFEST, CATEGORICAL_INFERENCE = _categorical_package()
CATEGORICAL_SCORING = ort.InferenceSession(
    scoring_model(CATEGORICAL_INFERENCE, CATEGORICAL_MANIFEST).SerializeToString()
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["F", "M", "X", ""])),
            st.one_of(st.none(), st.integers(0, 4)),
            st.one_of(st.none(), st.booleans()),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_a_missing_category_scores_as_the_agent_encodes_it(rows: list[tuple[object, ...]]) -> None:
    """A one-hot column whose missing value is a category of its own: the agent keeps the row
    (category slots 0, indicator 1) and the exported model, given the missing flags, scores
    it the same, whatever value the column's own input holds there; a value outside the
    categories (not missing) gives zeros and indicator 0 in both."""
    manifest = CATEGORICAL_MANIFEST
    assert [f.missing.indicator for f in manifest.features] == [True, True, True, False]
    assert manifest.required_columns == ("grade", "outcome")
    sex, stage, smoker, grade = zip(*rows, strict=True)
    table = pa.table({
        "sex": pa.array(sex, pa.string()), "stage": pa.array(stage, pa.int64()),
        "smoker": pa.array(smoker, pa.bool_()), "grade": pa.array(grade, pa.int64()),
    })  # fmt: skip
    (expected,) = ort.InferenceSession(CATEGORICAL_INFERENCE.SerializeToString()).run(
        None, {"x": features(table.to_batches()[0], manifest)}
    )
    raw = {
        # A missing value's own input is anything: here a real category, which must not count.
        "sex": np.array([v if v is not None else "M" for v in sex], object),
        "stage": np.array([v if v is not None else 2 for v in stage], np.int64),
        "smoker": np.array([v if v is not None else True for v in smoker], np.bool_),
        "grade": np.array(grade, np.int64),
        "missing::sex": np.array([v is None for v in sex]),
        "missing::stage": np.array([v is None for v in stage]),
        "missing::smoker": np.array([v is None for v in smoker]),
    }
    (got,) = CATEGORICAL_SCORING.run(None, raw)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    x = features(table.to_batches()[0], manifest)
    # The indicator slots (after each kept column's categories) are exactly the nulls.
    np.testing.assert_array_equal(x[:, 2], [v is None for v in sex])
    np.testing.assert_array_equal(x[:, 6], [v is None for v in stage])
    np.testing.assert_array_equal(x[:, 8], [v is None for v in smoker])
    assert not x[[v is None for v in sex], 0:2].any()


def test_a_one_hot_columns_missing_value_is_declared_as_an_indicator_alone() -> None:
    """The manifest takes ``{"indicator": true}`` for a one-hot column and nothing else; a missing
    flags input named like a feature column is refused at export."""
    model = build_logistic_regression(3)
    fields = zoo_manifest_fields(
        model, name="acme/risk", version="1.0.0", publisher="acme", features=_CATEGORICAL[:1], label_columns=["y"]
    )
    complete = complete_manifest(fields, zoo_graphs(model))
    for missing, words in (
        ({"value": 1.0, "indicator": True}, r"missing\.value: a one-hot column imputes no value"),
        ({"indicator": False}, "indicator: must be true: a one-hot column keeps a row missing it only with an indic"),
        ({}, r"inputs\.features\[0\]\.missing\.indicator: is required"),
    ):
        complete["inputs"]["features"][0]["missing"] = missing
        with pytest.raises(PackageRejected, match=words):
            parse_manifest(parse_strict_json(canonical_json(complete)))
    clash = (*_CATEGORICAL[:1], FeatureColumn("missing::sex"))
    wider = build_logistic_regression(4)
    fields = zoo_manifest_fields(
        wider, name="acme/risk", version="1.0.0", publisher="acme", features=clash, label_columns=["y"]
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, zoo_graphs(wider)))))
    inference = wider.inference_model({"w": np.zeros(4, np.float32), "b": np.array(0.0, np.float32)})
    with pytest.raises(ScoringModelError, match="'missing::sex' has the name of another column's missing flags"):
        scoring_model(inference, manifest)
