"""`edge-agent dataset ...` and other CLI commands, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from agent.cli.main import main


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=cwd, timeout=60, env=env
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    table = pa.table({"patient_id": ["a", "b", "c"], "age": [61, 72, 55], "event": [True, False, True]})
    pq.write_table(table, tmp_path / "cohort.parquet")
    feather.write_feather(table, tmp_path / "cohort.feather")
    (tmp_path / "labs.csv").write_text("hb,crp\n12.5,3\n13.1,10\n")
    return {
        "parquet": tmp_path / "cohort.parquet",
        "feather": tmp_path / "cohort.feather",
        "csv": tmp_path / "labs.csv",
    }


def test_add_list_show_remove_round_trip(tmp_path: Path, files: dict[str, Path]) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    added = cli(
        "dataset",
        "add",
        "cohort",
        str(files["parquet"]),
        "--columns",
        "age,event",
        "--description",
        "Cohort",
        *state,
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    assert "3 rows, 2 columns exposed" in added.stdout
    assert cli("dataset", "add", "labs", str(files["csv"]), *state, cwd=tmp_path).returncode == 0
    assert cli("dataset", "add", "cohort-ipc", str(files["feather"]), *state, cwd=tmp_path).returncode == 0

    listed = cli("dataset", "list", "--json", *state, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"cohort", "labs", "cohort-ipc"}
    assert rows["cohort"]["format"] == "parquet"
    assert [c["name"] for c in rows["cohort"]["columns"]] == ["age", "event"]
    assert rows["labs"]["format"] == "csv" and rows["labs"]["row_count"] == 2
    assert rows["cohort-ipc"]["format"] == "arrow_ipc"

    table = cli("dataset", "list", *state, cwd=tmp_path)
    assert table.stdout.splitlines()[0].split() == ["ID", "FORMAT", "SOURCE", "STATUS", "ROWS", "COLUMNS", "PATH"]

    shown = cli("dataset", "show", "cohort", *state, cwd=tmp_path)
    assert shown.returncode == 0
    assert "rows:        3" in shown.stdout and "age" in shown.stdout and "patient_id" not in shown.stdout

    removed = cli("dataset", "remove", "labs", *state, cwd=tmp_path)
    assert removed.returncode == 0
    assert files["csv"].exists()
    assert cli("dataset", "show", "labs", *state, cwd=tmp_path).returncode == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dataset", "add", "Bad_ID", "{parquet}"], "Bad_ID"),
        (["dataset", "add", "x", "{missing}"], "no such file or directory"),
        (["dataset", "add", "x", "{parquet}", "--format", "xlsx"], "xlsx"),
        (["dataset", "add", "x", "{parquet}", "--columns", "age,nope"], "nope"),
        (["dataset", "add", "x", "{parquet}", "--columns", "age,,event"], "empty column name"),
        (["dataset", "remove", "ghost"], "ghost"),
        (["dataset", "show", "ghost"], "ghost"),
    ],
)
def test_dataset_errors_name_the_value_at_fault(
    tmp_path: Path, files: dict[str, Path], args: list[str], message: str
) -> None:
    concrete = [a.format(parquet=files["parquet"], missing=tmp_path / "missing.parquet") for a in args]
    result = cli(*concrete, "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert result.returncode in (1, 2), result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_add_is_refused_and_keeps_the_first(tmp_path: Path, files: dict[str, Path]) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    assert cli("dataset", "add", "cohort", str(files["parquet"]), *state, cwd=tmp_path).returncode == 0
    again = cli("dataset", "add", "cohort", str(files["csv"]), *state, cwd=tmp_path)
    assert again.returncode == 1 and "cohort" in again.stderr
    shown = json.loads(cli("dataset", "show", "cohort", "--json", *state, cwd=tmp_path).stdout)
    assert shown["format"] == "parquet"


def test_config_and_state_dir_together_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dataset", "list", "--config", str(tmp_path / "a.toml"), "--state-dir", str(tmp_path)])
    assert code == 2
    assert "--state-dir is for development instances" in capsys.readouterr().err


def test_keys_generate_writes_a_key_pair(tmp_path: Path) -> None:
    result = cli("keys", "generate", "--out", str(tmp_path / "id.key"), cwd=tmp_path)
    assert result.returncode == 0
    assert "fingerprint: SHA256:" in result.stdout
    again = cli("keys", "generate", "--out", str(tmp_path / "id.key"), cwd=tmp_path)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_dev_certs_creates_then_reuses(tmp_path: Path) -> None:
    first = cli("dev-certs", "--out", str(tmp_path / "pki"), cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.startswith("created")
    second = cli("dev-certs", "--out", str(tmp_path / "pki"), cwd=tmp_path)
    assert second.returncode == 0 and second.stdout.startswith("existing")
