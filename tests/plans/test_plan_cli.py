"""`edge-sponsor plan build|sign` and `edge-agent package inspect|verify` on a plan, through the real
entry points: exit codes, and errors that name the file and the field at fault."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from agent.cli.main import main as agent_main
from agent.identity.agent_key import generate_key_file, public_key_path
from edge_sponsor.cli.main import main as sponsor_main
from tests.conftest import DEFAULT_POLICY, Pki, write_config
from tests.plans.test_plan_format import PLAN


def write_plan(path: Path, plan: object) -> Path:
    path.write_text(json.dumps(plan))
    return path


def build(tmp_path: Path, plan_file: Path, *extra: str) -> int:
    return sponsor_main(
        [
            "plan",
            "build",
            str(plan_file),
            "--out",
            str(tmp_path / "plan.zip"),
            "--name",
            "acme/study",
            "--version",
            "1.0.0",
            "--publisher",
            "acme",
            *extra,
        ]
    )


def test_build_sign_inspect_and_verify_a_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_key_file(tmp_path / "publisher.key")
    assert build(tmp_path, write_plan(tmp_path / "plan.json", PLAN), "--noise-multiplier", "1:50") == 0
    assert "signed:       no (run edge-sponsor plan sign)" in capsys.readouterr().out
    assert sponsor_main(["plan", "sign", str(tmp_path / "plan.zip"), "--key", str(tmp_path / "publisher.key")]) == 0
    capsys.readouterr()

    assert agent_main(["package", "inspect", str(tmp_path / "plan.zip")]) == 0
    shown = capsys.readouterr().out
    assert "acme/study 1.0.0 (analysis plan)" in shown and "tasks:       dp_describe, dp_survival" in shown
    assert "cohort:      age >= 18; stage in {II, III}" in shown
    assert "strata:      arm=control, sex=F, arm=control, sex=M" in shown
    assert "variable:    smoker: counts of true, false, other, missing" in shown
    assert "releases:    dp_describe: " in shown and "releases:    dp_survival: 36 numbers in 1 block" in shown

    assert (
        agent_main(
            [
                "package",
                "verify",
                str(tmp_path / "plan.zip"),
                "--trusted-key",
                str(public_key_path(tmp_path / "publisher.key")),
            ]
        )
        == 0
    )
    assert "OK sha256:" in capsys.readouterr().out
    assert agent_main(["package", "inspect", "--json", str(tmp_path / "plan.zip")]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    assert manifest["hyperparameters"] == {"noise_multiplier": {"max": 50, "min": 1}}
    assert "graphs" not in manifest and manifest["plan"]["survival"]["grid"] == [6, 12, 24]


@pytest.mark.parametrize(
    ("content", "options", "words"),
    [
        ("{not json", (), "plan.json: not valid JSON"),
        ("[1, 2]", (), "plan.json: the plan must be a JSON object"),
        (
            json.dumps(dict(PLAN, variables=[{"column": "age", "kind": "numeric", "bounds": [5, 5]}])),
            (),
            "plan.json: manifest_invalid: manifest field plan.variables[0].bounds: must be [low, high] with low < high",
        ),
        (json.dumps(PLAN), ("--task-kinds", "dp_gradient"), "plan.json: the plan package would be refused"),
        (json.dumps(PLAN), ("--noise-multiplier", "lots"), "--noise-multiplier must be MIN:MAX, got 'lots'"),
    ],
)
def test_a_bad_plan_is_refused_naming_the_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, options: tuple[str, ...], words: str
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(content)
    assert build(tmp_path, plan_file, *options) == 2
    errors = capsys.readouterr().err
    assert words in errors and "Traceback" not in errors
    assert not (tmp_path / "plan.zip").exists()


def test_a_missing_plan_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build(tmp_path, tmp_path / "absent.json") == 2
    assert "absent.json: cannot read the plan" in capsys.readouterr().err


def test_the_hospital_uploads_a_plan_itself_and_approves_it(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edge-agent package upload`: no coordinator needed to put a package before the reviewer; what
    the policy does not trust is refused with its code, and nothing is stored."""
    publisher = generate_key_file(tmp_path / "publisher.key")
    reviewer = generate_key_file(tmp_path / "reviewer.key")
    assert build(tmp_path, write_plan(tmp_path / "plan.json", PLAN), "--sign-key", str(tmp_path / "publisher.key")) == 0
    agent = tmp_path / "agent"
    (agent / "state").mkdir(parents=True)
    keys = {name: base64.b64encode(key.public_bytes).decode() for name, key in (("p", publisher), ("r", reviewer))}
    policy = (
        DEFAULT_POLICY
        + f'\n[[publishers]]\nname = "Acme"\npublic_key = "{keys["p"]}"\n'
        + f'\n[[reviewers]]\nname = "Erin Ward"\npublic_key = "{keys["r"]}"\n'
        + "\n[packages]\nrequire_approval = true\n"
    )
    config = ["--config", str(write_config(agent, pki, policy=policy))]
    capsys.readouterr()
    assert agent_main(["package", "upload", str(tmp_path / "plan.zip"), *config]) == 0
    shown = capsys.readouterr().out
    assert "PENDING" in shown and "(analysis plan)" in shown and "approve with: edge-agent package approve" in shown
    digest = shown.split()[0]
    assert (
        agent_main(
            [
                "package",
                "approve",
                digest,
                "--reviewer-key",
                str(tmp_path / "reviewer.key"),
                "--reviewer",
                "Dr. Erin Ward",
                *config,
            ]
        )
        == 0
    )
    entries = [
        json.loads(line)
        for f in sorted((agent / "state" / "audit").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    uploaded = [e for e in entries if e["kind"] == "package.uploaded"]
    assert [(e["coordinator"], e["package_digest"]) for e in uploaded] == [("local operator", digest)]
    assert [e["kind"] for e in entries if e["kind"].startswith("package.")] == ["package.uploaded", "package.approved"]

    # Signed by a key the policy does not list: refused (exit 1), nothing stored.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    generate_key_file(stranger / "k.key")
    other = dict(PLAN, cohort=[])
    assert build(stranger, write_plan(stranger / "plan.json", other), "--sign-key", str(stranger / "k.key")) == 0
    capsys.readouterr()
    assert agent_main(["package", "upload", str(stranger / "plan.zip"), *config]) == 1
    assert "unknown_key" in capsys.readouterr().err
    entries = [
        json.loads(line)
        for f in sorted((agent / "state" / "audit").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    (refusal,) = [e for e in entries if e["kind"] == "package.refused"]
    assert (refusal["coordinator"], refusal["rule"]) == ("local operator", "unknown_key")
    assert agent_main(["package", "list", "--json", *config]) == 0
    assert [p["digest"] for p in json.loads(capsys.readouterr().out)] == [digest]
