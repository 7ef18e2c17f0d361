"""`edge-sponsor package build|sign` and `edge-agent package ...` through their argparse modules."""

from __future__ import annotations

import argparse
import base64
import json
import re
import zipfile
from pathlib import Path

import pytest
from package_builders import FEATURES

from agent.cli import package as package_cli
from agent.identity.agent_key import generate_key_file
from agent.packages import (
    DecisionError,
    PackageInputError,
    PackageStatus,
    PackageStore,
    UnknownPackageError,
    verify_decision,
)
from edge_sponsor.cli import package as sponsor_package_cli
from edge_sponsor.cli.package import PackageCommandError
from tests.conftest import DEFAULT_POLICY, Pki, write_config


def run(*argv: str) -> int:
    # Building and signing are the publisher's command (edge-sponsor), the rest the agent's.
    publisher = argv[1] in ("build", "sign")
    parser = argparse.ArgumentParser(prog="edge-sponsor" if publisher else "edge-agent")
    commands = parser.add_subparsers(dest="command", required=True)
    (sponsor_package_cli if publisher else package_cli).add_parser(commands)
    args = parser.parse_args(list(argv))
    return int(args.handler(args))


def test_publisher_and_reviewer_flow(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    publisher = generate_key_file(tmp_path / "publisher.key")
    reviewer = generate_key_file(tmp_path / "reviewer.key")
    stranger = generate_key_file(tmp_path / "stranger.key")
    out = tmp_path / "weibull.zip"
    assert (
        run(
            "package",
            "build",
            "--model",
            "weibull",
            "--time-scale",
            "365",
            "--features",
            "age,sex,bmi",
            "--standardise",
            "age=61.5:12.25",
            "--one-hot",
            "sex=F,M",
            "--label",
            "time,event",
            "--name",
            "acme/survival",
            "--version",
            "0.3.0",
            "--publisher",
            "acme",
            "--bound",
            "clip_norm=0.1:5",
            "--with-inference-model",
            "--out",
            str(out),
        )
        == 0
    )
    assert run("package", "sign", "--key", str(tmp_path / "publisher.key"), str(out)) == 0
    assert run("package", "inspect", str(out)) == 0
    assert "acme/survival 0.3.0" in capsys.readouterr().out
    assert run("package", "verify", str(out), "--trusted-key", str(tmp_path / "publisher.key.pub")) == 0
    assert run("package", "verify", str(out), "--trusted-key", str(tmp_path / "stranger.key.pub")) == 1
    assert "[unknown_key]" in capsys.readouterr().out

    # The agent side: the daemon commits uploads into state_dir/packages.
    from package_builders import NOW, trust_for

    from agent.packages import PackageLimits

    # A production agent whose policy lists the reviewer's key (not the stranger's).
    listed = base64.b64encode(reviewer.public_bytes).decode()
    agent = tmp_path / "agent"
    (agent / "state").mkdir(parents=True)
    config = write_config(
        agent, pki, policy=DEFAULT_POLICY + f'\n[[reviewers]]\nname = "Erin Ward"\npublic_key = "{listed}"\n'
    )
    store = PackageStore(agent / "state" / "packages")
    stored = store.add(out.read_bytes(), trust_for(publisher), PackageLimits(), NOW, require_approval=True)
    state = ["--config", str(config)]
    assert run("package", "pending", *state) == 0
    assert stored.digest in capsys.readouterr().out
    with pytest.raises(DecisionError, match=re.escape(f"{stranger.fingerprint} is not listed in the policy")):
        run(
            "package", "approve", stored.digest, "--reviewer-key", str(tmp_path / "stranger.key"),
            "--reviewer", "Mallory", *state,
        )
    assert store.decisions(stored.digest) == []
    assert (
        run(
            "package",
            "approve",
            stored.digest,
            "--reviewer-key",
            str(tmp_path / "reviewer.key"),
            "--reviewer",
            "Dr. Erin Ward",
            *state,
        )
        == 0
    )
    with pytest.raises(DecisionError):
        run(
            "package",
            "approve",
            stored.digest,
            "--reviewer-key",
            str(tmp_path / "reviewer.key"),
            "--reviewer",
            "Dr. Erin Ward",
            *state,
        )
    with pytest.raises(UnknownPackageError):
        run(
            "package",
            "reject",
            "sha256:" + "1" * 64,
            "--reason",
            "x",
            "--reviewer-key",
            str(tmp_path / "reviewer.key"),
            "--reviewer",
            "Dr. Erin Ward",
            *state,
        )
    capsys.readouterr()
    assert run("package", "list", "--json", *state) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["status"] == PackageStatus.APPROVED.value
    approved = store.get(stored.digest)
    assert approved is not None and approved.decision is not None
    verify_decision(approved.decision, reviewer.public_key)
    assert stranger.fingerprint not in listed["signer_key_ids"]


def test_build_from_own_graph(tmp_path: Path) -> None:
    from edge_sponsor.publisher.zoo import build_logistic_regression

    model = build_logistic_regression(4)
    grad = tmp_path / "grad.onnx"
    grad.write_bytes(model.grad_graph.SerializeToString())
    fields = {
        "name": "acme/torch-export",
        "version": "1.0.0",
        "publisher": "acme",
        "description": "exported",
        "task_kinds": ["dp_gradient"],
        "parameters": [{"name": "w", "dtype": "float32", "shape": [4]}, {"name": "b", "dtype": "float32", "shape": []}],
        "inputs": {
            "features": [f.to_json() for f in FEATURES],
            "label": {"kind": "binary", "column": "outcome", "dtype": "float32", "shape": []},
        },
        "metrics": [],
        "hyperparameters": {
            "clip_norm": {"min": 0.1, "max": 10},
            "noise_multiplier": {"min": 0.5, "max": 5},
            "sampling_rate": {"min": 0.0001, "max": 0.1},
            "local_steps": {"min": 1, "max": 100},
            "learning_rate": {"min": 0.001, "max": 1},
        },
    }
    (tmp_path / "fields.json").write_text(json.dumps(fields))
    out = tmp_path / "own.zip"
    assert (
        run(
            "package",
            "build",
            "--grad-onnx",
            str(grad),
            "--manifest-fields",
            f"@{tmp_path / 'fields.json'}",
            "--out",
            str(out),
        )
        == 0
    )
    fields["task_kinds"] = ["dp_evaluate"]
    (tmp_path / "fields.json").write_text(json.dumps(fields))
    with pytest.raises(PackageInputError, match=r"graphs\.eval"):
        run(
            "package",
            "build",
            "--grad-onnx",
            str(grad),
            "--manifest-fields",
            f"@{tmp_path / 'fields.json'}",
            "--out",
            str(out),
        )


def test_a_weibull_package_needs_its_time_scale(tmp_path: Path) -> None:
    out = tmp_path / "weibull.zip"
    arguments = ["package", "build", "--model", "weibull", "--features", "age", "--label", "time,event"]
    arguments += ["--name", "acme/survival", "--version", "0.3.0", "--publisher", "acme", "--out", str(out)]
    with pytest.raises(PackageCommandError, match="--time-scale"):
        run(*arguments)
    with pytest.raises(PackageCommandError, match="time_scale must be finite and >= 0"):
        run(*arguments, "--time-scale", "inf")
    assert not out.exists()


def test_a_score_histogram_is_built_into_a_logistic_package_only_with_a_sensible_bin_count(tmp_path: Path) -> None:
    out = tmp_path / "risk.zip"
    arguments = ["package", "build", "--features", "age", "--label", "outcome", "--name", "acme/risk"]
    arguments += ["--version", "1.0.0", "--publisher", "acme", "--out", str(out)]
    with pytest.raises(PackageCommandError, match="--score-bins: only --model logistic and weibull"):
        run(*arguments, "--model", "linear", "--score-bins", "10")
    with pytest.raises(PackageCommandError, match="score_bins must be a whole number from 2 to 30"):
        run(*arguments, "--model", "logistic", "--score-bins", "40")
    with pytest.raises(PackageCommandError, match="--time-bins and --horizon go with --model weibull"):
        run(*arguments, "--model", "logistic", "--score-bins", "10", "--time-bins", "4")
    weibull = [*arguments, "--model", "weibull", "--time-scale", "365", "--score-bins", "8"]
    with pytest.raises(PackageCommandError, match="time_bins must be a whole number"):
        run(*weibull)
    with pytest.raises(PackageCommandError, match="at most 240 cells"):
        run(*weibull, "--time-bins", "20")
    assert not out.exists()
    assert run(*arguments, "--model", "logistic", "--score-bins", "10") == 0
    with zipfile.ZipFile(out) as archive:
        metrics = json.loads(archive.read("manifest.json"))["metrics"]
    cells = [metric for metric in metrics if metric.get("group") == "score_histogram"]
    assert len(cells) == 20 and all(metric["range"] == [0, 1] for metric in cells)


def test_missing_values_are_imputed_only_as_declared_and_each_mistake_names_its_option(tmp_path: Path) -> None:
    out = tmp_path / "risk.zip"
    arguments = ["package", "build", "--model", "logistic", "--features", "age,bmi,sex", "--label", "outcome"]
    arguments += ["--one-hot", "sex=F,M", "--name", "acme/risk", "--version", "1.0.0", "--publisher", "acme"]
    arguments += ["--out", str(out)]
    with pytest.raises(PackageCommandError, match="--impute age: 'sixty' is not a number"):
        run(*arguments, "--impute", "age=sixty")
    with pytest.raises(PackageCommandError, match="--impute age: the value must be finite"):
        run(*arguments, "--impute", "age=nan")
    with pytest.raises(PackageCommandError, match="--impute sex: missing values can be imputed in numeric columns"):
        run(*arguments, "--impute", "sex=F")
    with pytest.raises(PackageCommandError, match="--missing-indicator bmi: needs --impute bmi=VALUE, or --one-hot"):
        run(*arguments, "--impute", "age=60", "--missing-indicator", "bmi")
    with pytest.raises(PackageCommandError, match="columns not in --features: weight"):
        run(*arguments, "--impute", "weight=70")
    assert not out.exists()
    assert run(*arguments, "--impute", "age=60", "--missing-indicator", "age", "--impute", "bmi=27.5") == 0
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    features = {f["column"]: f.get("missing") for f in manifest["inputs"]["features"]}
    assert features["age"] == {"value": 60, "indicator": True} and features["sex"] is None
    assert features["bmi"] == {"value": 27.5, "indicator": False}
    # x: age, its indicator, bmi, and sex's two categories.
    assert manifest["parameters"][0]["shape"] == [5]
    # A one-hot column's missing value as a category of its own: the indicator alone.
    assert run(*arguments, "--missing-indicator", "sex") == 0
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    features = {f["column"]: f.get("missing") for f in manifest["inputs"]["features"]}
    assert features == {"age": None, "bmi": None, "sex": {"indicator": True}}
    assert manifest["parameters"][0]["shape"] == [5]


def test_private_standardisation_constants_need_a_readable_describe_report(tmp_path: Path) -> None:
    out = tmp_path / "risk.zip"
    arguments = ["package", "build", "--model", "logistic", "--features", "age", "--label", "outcome", "--name"]
    arguments += ["acme/risk", "--version", "1.0.0", "--publisher", "acme", "--out", str(out), "--standardise", "age"]
    with pytest.raises(PackageCommandError, match="needs --standardise-from REPORT"):
        run(*arguments)
    with pytest.raises(PackageCommandError, match="cannot read the report"):
        run(*arguments, "--standardise-from", str(tmp_path / "missing.json"))
    (tmp_path / "other.json").write_text('{"survival": {}}')
    with pytest.raises(PackageCommandError, match="not the JSON report of `edge-sponsor study describe`"):
        run(*arguments, "--standardise-from", str(tmp_path / "other.json"))
    withheld = {"table_one": {"columns": [{"site": "pooled", "stratum": "all", "variables": [
        {"column": "age", "mean": {"value": None}, "sd": None}]}]}}
    (tmp_path / "withheld.json").write_text(json.dumps(withheld))
    with pytest.raises(PackageCommandError, match="withheld or not positive; declare MEAN:STD"):
        run(*arguments, "--standardise-from", str(tmp_path / "withheld.json"))
    assert not out.exists()
