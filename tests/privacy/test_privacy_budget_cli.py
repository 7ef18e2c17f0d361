"""`edge-agent budget show` over a real ledger."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.cli import budget
from agent.datasets import DatasetFormat, DatasetRegistry, DatasetSource, DatasetSpec
from agent.privacy.accounting import RdpAccountant
from agent.privacy.errors import LedgerError
from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger
from agent.privacy.mechanism import Mechanism


def run(*argv: str) -> int:
    # agent/cli/main.py registers the command the same way.
    parser = argparse.ArgumentParser(prog="edge-agent")
    budget.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["budget", *argv])
    return int(args.handler(args))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, RdpAccountant())
    task = Mechanism.dp_local_training(0.01, 1.0, 50)
    for i, group in enumerate(["oncology-2024", "oncology-2024", "icu\x1b[31m"]):
        ledger.reserve(
            group, f"t{i}", task, limit_epsilon=8.0, delta=1e-6, coordinator="c", dataset="d", correlation_id="r"
        )
    ledger.commit("t0")
    return tmp_path


def test_show_table(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show", "--state-dir", str(state_dir)) == 0
    out = capsys.readouterr().out
    assert f"ledger {state_dir / LEDGER_FILENAME} (accountant: rdp)" in out
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["BUDGET", "GROUP", "ε"]
    oncology = next(line for line in lines if line.startswith("oncology-2024"))
    fields = oncology.split()
    assert fields[3] == "8.000" and fields[5] == "1e-06" and fields[6:8] == ["1", "1"]
    # A group name from the policy cannot drive the terminal.
    assert "\x1b" not in out and "icu\\x1b[31m" in out


def test_show_json(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show", "--state-dir", str(state_dir), "--json", "--accountant", "pld") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["accountant"] == "pld"
    groups = {g["budget_group"]: g for g in document["groups"]}
    oncology = groups["oncology-2024"]
    assert oncology["tasks_committed"] == 1 and oncology["tasks_reserved"] == 1
    assert 0 < oncology["epsilon_spent"] < oncology["epsilon_with_reserved"] < oncology["epsilon_limit"] == 8.0
    assert oncology["delta"] == 1e-6
    assert oncology["last_used"].endswith("+00:00")


def test_show_empty_does_not_create_the_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show", "--state-dir", str(tmp_path)) == 0
    assert "no budget group has been charged" in capsys.readouterr().out
    assert not (tmp_path / LEDGER_FILENAME).exists()


def test_damaged_ledger_is_a_failure_naming_the_file(tmp_path: Path) -> None:
    damaged = tmp_path / "ledger.sqlite"
    damaged.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(LedgerError, match=str(damaged)) as failure:
        run("show", "--ledger", str(damaged))
    assert isinstance(failure.value, budget.FAILURE_ERRORS)


def test_show_says_what_epsilon_is_counted_per(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Per patient for a dataset that declares a privacy unit, per row (and the k·ε warning) for one that does not."""
    data = tmp_path / "data"
    data.mkdir()
    # 30 patients with 1 to 3 rows each (60 rows); 25 rows, one per row-unit.
    patients = [f"p{i}" for i in range(30) for _ in range(1 + i % 3)]
    pq.write_table(pa.table({"patient_id": patients, "age": [1.0] * len(patients)}), data / "visits.parquet")
    pq.write_table(pa.table({"age": [1.0] * 25}), data / "labs.parquet")
    registry = DatasetRegistry(tmp_path / "datasets.sqlite")
    registry.add(DatasetSpec("visits", data / "visits.parquet", DatasetFormat.PARQUET, columns=("age",),
                             source=DatasetSource.REGISTRY, privacy_unit="patient_id"))
    registry.add(DatasetSpec("labs", data / "labs.parquet", DatasetFormat.PARQUET, columns=("age",),
                             source=DatasetSource.REGISTRY))
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME, RdpAccountant())
    for group in ("visits", "labs"):  # the development policy gives each dataset its own group
        ledger.reserve(group, f"t-{group}", Mechanism.dp_gradient(0.1, 1.0), limit_epsilon=8.0, delta=1e-6,
                       coordinator="c", dataset=group, correlation_id="r")
        ledger.commit(f"t-{group}")

    assert run("show", "--state-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    visits = next(line for line in out.splitlines() if "visits / visits" in line)
    labs = next(line for line in out.splitlines() if "labs / labs" in line)
    assert "ε per patient (privacy unit patient_id, at most 64 rows of each read; 20 to 49 patients)" in visits
    assert "ε per row (20 to 49 rows)" in labs and "a patient with k rows is protected only at about k·ε" in labs

    assert run("show", "--state-dir", str(tmp_path), "--json") == 0
    groups = {g["budget_group"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    assert groups["visits"]["datasets"] == [
        {"dataset": "visits", "privacy_unit": "patient_id", "epsilon_per": "unit", "max_rows_per_unit": 64,
         "unit_count": [20, 50]}
    ]
    assert groups["labs"]["datasets"] == [
        {"dataset": "labs", "privacy_unit": None, "epsilon_per": "row", "max_rows_per_unit": None,
         "unit_count": [20, 50]}
    ]
