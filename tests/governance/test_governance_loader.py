"""policy.toml: the shipped example loads; every mistake names file, key and problem."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConfigError
from agent.governance.loader import load_policy, parse_policy
from agent.identity.agent_key import generate_key_file
from agent.tasks.kinds import registry

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path("/etc/edge-agent/policy.toml")

MINIMAL = """
[[coordinators]]
identity = "c1"
datasets = ["d1"]
task_kinds = ["dp_gradient"]

[[datasets]]
id = "d1"
epsilon_budget = 2.0
"""


def parse(text: str) -> object:
    return parse_policy(text.encode(), SOURCE)


def test_shipped_example_policy_loads() -> None:
    policy = load_policy(REPO / "packaging" / "policy.toml")
    coordinator = policy.coordinators["spiffe://pharma.example/coordinator/eu-1"]
    assert coordinator.task_kinds == frozenset(registry.names())
    assert coordinator.valid_until == dt.datetime(2028, 1, 1, tzinfo=dt.UTC)
    dataset = policy.datasets["oncology-2024"]
    assert dataset.bounds["sampling_rate"].maximum == 0.05
    assert dataset.bounds["noise_multiplier"].minimum == 0.8
    assert "patient_id" in dataset.forbidden_columns
    assert dataset.agreement_expires == dt.date(2027, 12, 31)
    assert policy.packages.require_approval
    assert policy.digest.startswith("sha256:")
    assert dataset.require_privacy_unit is True
    assert dataset.max_rows_per_unit == 64


def test_minimal_policy_gets_safe_defaults() -> None:
    policy = parse_policy(MINIMAL.encode(), SOURCE)
    rule = policy.datasets["d1"]
    assert rule.min_cohort_size == 10
    assert rule.delta == 1e-5
    assert rule.budget_group == "d1"
    assert rule.forbidden_columns == frozenset()
    assert policy.packages.require_approval is True
    assert rule.require_privacy_unit is False
    assert rule.max_rows_per_unit == 64


def test_the_wildcard_rule_copies_the_unit_settings() -> None:
    text = MINIMAL.replace('id = "d1"', 'id = "*"').replace('datasets = ["d1"]', 'datasets = ["*"]')
    policy = parse_policy((text + "require_privacy_unit = true\nmax_rows_per_unit = 8\n").encode(), SOURCE)
    rule = policy.dataset_rule("visits")
    assert rule is not None
    assert (rule.require_privacy_unit, rule.max_rows_per_unit) == (True, 8)


def test_publisher_keys_from_base64_and_file(tmp_path: Path) -> None:
    key = generate_key_file(tmp_path / "pub.key")
    raw = base64.b64encode(key.public_bytes).decode()
    text = MINIMAL + f"""
[[publishers]]
name = "inline"
public_key = "{raw}"
expires = 2027-01-31

[[publishers]]
name = "from-file"
public_key_file = "{tmp_path / 'other.pub'}"
revoked = true
"""
    other = generate_key_file(tmp_path / "other")
    policy = parse_policy(text.encode(), tmp_path / "policy.toml")
    assert policy.publishers[0].key_id == key.fingerprint
    assert policy.publishers[0].expires == dt.datetime(2027, 2, 1, tzinfo=dt.UTC)
    assert policy.publishers[1].key_id == other.fingerprint and policy.publishers[1].revoked


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (MINIMAL.replace('task_kinds = ["dp_gradient"]', 'task_kinds = ["dp_magic"]'), "coordinators[0].task_kinds[0]",
         "unknown task kind"),
        (MINIMAL.replace('datasets = ["d1"]', "datasets = []"), "coordinators[0].datasets", "must list"),
        (MINIMAL.replace('datasets = ["d1"]', 'datasets = ["d2"]'), "coordinators", "without a [[datasets]] rule"),
        (MINIMAL.replace("epsilon_budget = 2.0", ""), "datasets[0].epsilon_budget", "is required"),
        (MINIMAL.replace("epsilon_budget = 2.0", "epsilon_budget = -1.0"), "datasets[0].epsilon_budget", "between"),
        (MINIMAL + "delta = 0.0\n", "datasets[0].delta", "greater than 0"),
        (MINIMAL + 'exposed_columns = ["a"]\nforbidden_columns = ["a"]\n', "datasets[0].exposed_columns",
         "forbidden"),
        (MINIMAL + "min_cohort_size = 0\n", "datasets[0].min_cohort_size", "between"),
        (MINIMAL + "[datasets.bounds]\nsampling_rate = { min = 0.5, max = 0.1 }\n",
         "datasets[0].bounds.sampling_rate.min", "greater than max"),
        (MINIMAL + "[datasets.bounds]\nsampling_rate = { maximum = 0.1 }\n",
         "datasets[0].bounds.sampling_rate.maximum", "did you mean 'max'"),
        (MINIMAL.replace('identity = "c1"', 'identity = "c1"\nvalid_from = 2027-01-01\nvalid_until = 2026-01-01'),
         "coordinators[0].valid_until", "after valid_from"),
        (MINIMAL.replace('identity = "c1"', 'identity = "c1"\nvalid_until = 2026-01-01T00:00:00'),
         "coordinators[0].valid_until", "UTC offset"),
        (MINIMAL + '[[publishers]]\nname = "p"\npublic_key = "AAAA"\n', "publishers[0].public_key", "32 bytes"),
        (MINIMAL + '[[publishers]]\nname = "p"\n', "publishers[0].public_key", "exactly one"),
        (MINIMAL + '[[publishers]]\nname = "p"\npublic_key = "AAAA"\nnamespaces = "acme"\n',
         "publishers[0].namespaces", "a list of strings"),
        (MINIMAL + '[[publishers]]\nname = "p"\npublic_key = "AAAA"\nnamespaces = [""]\n',
         "publishers[0].namespaces[0]", "non-empty string"),
        (MINIMAL + '[[reviewers]]\nname = "r"\n', "reviewers[0].public_key", "exactly one"),
        (MINIMAL + '[[reviewers]]\npublic_key = "AAAA"\n', "reviewers[0].name", "required"),
        (MINIMAL + '[[reviewers]]\nname = "r"\npublic_key = "AAAA"\n', "reviewers[0].public_key", "32 bytes"),
        (MINIMAL + '[[reviewers]]\nname = "r"\npublic_key_file = "/nonexistent/r.pub"\n',
         "reviewers[0].public_key_file", "cannot read"),
        (MINIMAL + "[limits]\nmax_concurrent_tasks = 0\n", "limits.max_concurrent_tasks", "between"),
        (MINIMAL + "[limits]\nmax_accounting_settings = 0\n", "limits.max_accounting_settings", "between"),
        (MINIMAL + "[packages]\nrequire_approval = 1\n", "packages.require_approval", "true or false"),
        (MINIMAL + MINIMAL.split("[[datasets]]", maxsplit=1)[0], "coordinators[1].identity", "listed twice"),
        (MINIMAL + "[surprise]\n", "surprise", "unknown key"),
        (MINIMAL + "max_rows_per_unit = 0\n", "datasets[0].max_rows_per_unit", "between 1 and 10000, got 0"),
        (MINIMAL + "max_rows_per_unit = -3\n", "datasets[0].max_rows_per_unit", "between 1 and 10000, got -3"),
        (MINIMAL + "max_rows_per_unit = 10001\n", "datasets[0].max_rows_per_unit", "between 1 and 10000, got 10001"),
        (MINIMAL + 'max_rows_per_unit = "ten"\n', "datasets[0].max_rows_per_unit",
         "expected an integer, got str 'ten'"),
        (MINIMAL + "max_rows_per_unit = 2.5\n", "datasets[0].max_rows_per_unit", "expected an integer"),
        (MINIMAL + "max_rows_per_unit = true\n", "datasets[0].max_rows_per_unit", "got a boolean"),
        (MINIMAL + "min_cell_size = -1\n", "datasets[0].min_cell_size", "between 0 and 1000000, got -1"),
        (MINIMAL + 'min_cell_size = "five"\n', "datasets[0].min_cell_size", "expected an integer"),
        (MINIMAL + 'require_privacy_unit = "yes"\n', "datasets[0].require_privacy_unit", "true or false"),
    ],
)
def test_invalid_policy_names_key_and_problem(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as failure:
        parse(text)
    assert failure.value.key == key, str(failure.value)
    assert problem in str(failure.value)
    assert str(failure.value).startswith(str(SOURCE))


def test_reviewer_keys_from_base64_and_file(tmp_path: Path) -> None:
    inline = generate_key_file(tmp_path / "inline.key")
    from_file = generate_key_file(tmp_path / "ward")
    text = MINIMAL + f"""
[[reviewers]]
name = "inline"
public_key = "{base64.b64encode(inline.public_bytes).decode()}"

[[reviewers]]
name = "Dr. Ward"
public_key_file = "{tmp_path / 'ward.pub'}"
"""
    policy = parse_policy(text.encode(), tmp_path / "policy.toml")
    assert [(r.name, r.key_id, r.public_key) for r in policy.reviewers] == [
        ("inline", inline.fingerprint, inline.public_bytes),
        ("Dr. Ward", from_file.fingerprint, from_file.public_bytes),
    ]
    assert parse_policy(MINIMAL.encode(), SOURCE).reviewers == ()
    twice = text + f'\n[[reviewers]]\nname = "again"\npublic_key_file = "{tmp_path / "ward.pub"}"\n'
    with pytest.raises(ConfigError, match="listed twice") as failure:
        parse_policy(twice.encode(), tmp_path / "policy.toml")
    assert failure.value.key == "reviewers[2]"
    with pytest.raises(ConfigError, match="unknown key") as failure:
        parse_policy((text + "revoked = true\n").encode(), tmp_path / "policy.toml")
    assert failure.value.key == "reviewers[1].revoked"


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "none.toml")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_policy_or_a_located_error(data: bytes) -> None:
    try:
        parse_policy(data, SOURCE)
    except ConfigError as exc:
        assert str(exc).startswith(str(SOURCE))
