"""Canonical JSON, semantic versions and manifest schema messages."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from package_builders import manifest_and_graphs

from agent.packages import PackageRejected, RejectionCode, parse_manifest
from agent.packages.canonical import CanonicalJsonError, canonical_json, es_number, parse_strict_json
from agent.packages.envelope import pae
from agent.packages.semver import SemVer


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (100.0, "100"),
        (0.5, "0.5"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (123456.789, "123456.789"),
        (-2.5e-9, "-2.5e-9"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0.1 + 0.2, "0.30000000000000004"),
    ],
)
def test_numbers_follow_ecmascript(value: float, text: str) -> None:
    assert es_number(value) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_round_trip(value: float) -> None:
    assert float(es_number(value)) == value


def test_canonical_json_rules() -> None:
    assert canonical_json({"b": [1, 2.5, None], "a": "é\n\u2028", "c": True}) == (
        '{"a":"é\\n\u2028","b":[1,2.5,null],"c":true}'.encode()
    )
    for bad in (b'{"a":1,"a":2}', b"[NaN]", b"[1e999]", b"\xff"):
        with pytest.raises(CanonicalJsonError):
            canonical_json(parse_strict_json(bad))


def test_dsse_pae() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_semver_precedence() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.10.0",
        "2.0.0",
    ]
    parsed = [SemVer.parse(v) for v in ordered]
    assert sorted(parsed) == parsed
    assert SemVer.parse("1.0.0+build.5") == SemVer.parse("1.0.0")
    for bad in ("1.0", "01.0.0", "1.0.0-", "v1.0.0", "1.0.0-01"):
        with pytest.raises(ValueError):
            SemVer.parse(bad)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.update(name="globex/cardio"), "name"),
        (lambda m: m.update(version="1.0"), "version"),
        (lambda m: m["parameters"][0].update(shape=[0]), "parameters[0].shape[0]"),
        (lambda m: m["parameters"][1].update(name="x"), "parameters[1].name"),
        (lambda m: m["inputs"]["features"][0]["preprocessing"].update(std=0), "inputs.features[0].preprocessing.std"),
        (
            lambda m: m["inputs"]["features"][1]["preprocessing"].update(categories=["F", "F"]),
            "inputs.features[1].preprocessing.categories[1]",
        ),
        (lambda m: m["metrics"][0].update(range=[1, 0]), "metrics[0].range"),
        (lambda m: m["metrics"][0].update(group="bad name"), "metrics[0].group"),
        (lambda m: m["metrics"][0].update(range=[0, 1e101]), "metrics[0].range"),
        (lambda m: m["metrics"][0].update(group="g", range=[-1e-101, 1e-101]), "metrics[0].range"),
        (
            lambda m: [m["metrics"][0].update(group="g"), m["metrics"][1].update(group="g", range=[0, 2])],
            "metrics[1].range",
        ),
        (lambda m: m["hyperparameters"]["sampling_rate"].update(max=2), "hyperparameters.sampling_rate"),
        (lambda m: m["hyperparameters"].pop("clip_norm"), "hyperparameters.clip_norm"),
        (lambda m: m["graphs"]["grad"].update(file="../grad.onnx"), "graphs.grad.file"),
        (lambda m: m.update(task_kinds=["dp_gradient", "dp_gradient"]), "task_kinds[1]"),
        (lambda m: m.update(surprise=1), "surprise"),
    ],
)
def test_schema_messages_name_the_field(edit, field: str) -> None:  # type: ignore[no-untyped-def]
    manifest, _ = manifest_and_graphs()
    parse_manifest(json.loads(json.dumps(manifest)))
    edit(manifest)
    with pytest.raises(PackageRejected) as refused:
        parse_manifest(manifest)
    assert refused.value.code is RejectionCode.MANIFEST_INVALID
    assert f"manifest field {field}:" in refused.value.message


def test_parameters_are_limited_to_a_gibibyte_of_float32() -> None:
    manifest, _ = manifest_and_graphs()
    # 2^28 elements in all (1 GiB of float32) is the most a package may declare.
    manifest["parameters"][0].update(shape=[2**14, 2**14 - 1])
    manifest["parameters"][1].update(shape=[2**14])
    assert sum(math.prod(p["shape"]) for p in manifest["parameters"]) == 2**28
    parse_manifest(json.loads(json.dumps(manifest)))
    manifest["parameters"][1].update(shape=[2**14 + 1])
    with pytest.raises(PackageRejected) as refused:
        parse_manifest(manifest)
    assert "manifest field parameters: more than 268435456 elements in total" in refused.value.message
    manifest["parameters"][1].update(shape=[2**28 + 1])
    with pytest.raises(PackageRejected) as refused:
        parse_manifest(manifest)
    assert "manifest field parameters[1].shape[0]:" in refused.value.message


def test_unsupported_format_version() -> None:
    manifest, _ = manifest_and_graphs()
    manifest["format_version"] = 2
    with pytest.raises(PackageRejected) as refused:
        parse_manifest(manifest)
    assert refused.value.code is RejectionCode.UNSUPPORTED_FORMAT_VERSION


def test_metric_groups_are_signed_and_bound_their_members_together() -> None:
    manifest, _ = manifest_and_graphs()
    ranges = [metric["range"] for metric in manifest["metrics"]]
    manifest["metrics"][1].update(group="cells", range=[0, 2])
    manifest["metrics"][0].update(group="cells", range=[-2, 1])  # the same bound, another range
    with pytest.raises(PackageRejected, match="share one bound"):
        parse_manifest(json.loads(json.dumps(manifest)))
    manifest["metrics"][0].update(range=[0, 2])
    parsed = parse_manifest(json.loads(json.dumps(manifest)))
    # The group travels in the signed bytes, so a reviewer approves it.
    assert parse_manifest(parse_strict_json(canonical_json(parsed.to_json()))) == parsed
    (group,) = parsed.metric_groups
    assert (group.name, group.members, group.bound) == ("cells", (0, 1), 2.0)
    others = len(parsed.metrics) - 2
    # One block for the group and one per other metric: sqrt(blocks) times each metric's bound.
    blocks = 1 + others
    bounds = [2.0, 2.0] + [max(abs(low), abs(high)) for low, high in ranges[2:]]
    assert parsed.metric_noise_scales() == tuple(math.sqrt(blocks) * bound for bound in bounds)


@pytest.mark.parametrize("name", ["noisy_count", "dropped_units", "x", "y"])
def test_a_metric_may_not_take_the_name_of_a_released_count(name: str) -> None:
    """A task releases its counts as scalars beside the metric sums: a metric named like one
    would be read as the count (or hide it)."""
    manifest, _ = manifest_and_graphs()
    manifest["metrics"][0]["name"] = name
    with pytest.raises(PackageRejected, match=rf"metrics\[0\]\.name: '{name}' is reserved or used twice"):
        parse_manifest(json.loads(json.dumps(manifest)))


def test_a_reviewer_sees_a_metric_group_once_with_its_joint_bound() -> None:
    from agent.cli.package import _summary_lines
    from edge_sponsor.publisher.zoo import build_logistic_regression

    fields, _ = manifest_and_graphs(build_logistic_regression(4, score_bins=10))
    (line,) = [line for line in _summary_lines(parse_manifest(fields)) if line.lstrip().startswith("metrics:")]
    assert "loss[0.0, 10.0], correct[0.0, 1.0], brier[0.0, 1.0]" in line
    assert "group score_histogram: 20 metrics score_neg_00 ... score_pos_09 in [0.0, 1.0]" in line
    assert "L2 norm at most 1.0 per patient together" in line and line.count("score_") == 3


def test_a_reviewer_sees_what_a_missing_value_becomes() -> None:
    from agent.cli.package import _summary_lines
    from edge_sponsor.publisher.packaging import FeatureColumn, complete_manifest, zoo_graphs, zoo_manifest_fields
    from edge_sponsor.publisher.zoo import build_logistic_regression

    columns = (
        FeatureColumn("age", "float64", "standardise", mean=50.0, std=10.0, impute=61.5, indicator=True),
        FeatureColumn("bmi", "float64", impute=27.0),
        FeatureColumn("sex", "string", "one_hot", categories=("F", "M")),
    )
    model = build_logistic_regression(5)
    fields = zoo_manifest_fields(
        model, name="acme/risk", version="1.0.0", publisher="acme", features=columns, label_columns=["outcome"]
    )
    manifest = parse_manifest(complete_manifest(fields, zoo_graphs(model)))
    (line,) = [line for line in _summary_lines(manifest) if line.lstrip().startswith("features:")]
    assert "age(standardise) [missing: 61.5 and a missing indicator]" in line
    assert "bmi [missing: 27.0]" in line and "sex(one_hot)," not in line and line.rstrip().endswith("sex(one_hot)")
    # A one-hot column that keeps a missing value as its own category says so; the manifest reads back the same.
    kept = (*columns[:2], FeatureColumn("sex", "string", "one_hot", categories=("F", "M"), indicator=True))
    model = build_logistic_regression(6)
    fields = zoo_manifest_fields(
        model, name="acme/risk", version="1.0.0", publisher="acme", features=kept, label_columns=["outcome"]
    )
    manifest = parse_manifest(complete_manifest(fields, zoo_graphs(model)))
    assert parse_manifest(manifest.to_json()).features == manifest.features
    (line,) = [line for line in _summary_lines(manifest) if line.lstrip().startswith("features:")]
    assert line.rstrip().endswith("sex(one_hot) [missing: a category of its own, with a missing indicator]")
