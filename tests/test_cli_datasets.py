"""`edge-agent dataset ...` and other CLI commands, run as a user would.

Most calls run the CLI's entry point in this process (`cli`): every new process pays the
CLI's imports, seconds each. `keys generate` and `dev-certs` run as real processes
(`cli_process`), which also proves the module entry point works.
"""

from __future__ import annotations

import contextlib
import io
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


def cli_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=cwd, timeout=60, env=env
    )


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``edge-agent ARGS`` through the entry point, in this process, from ``cwd``."""
    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["edge-agent", *args], code, out.getvalue(), err.getvalue())


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
    assert cli("dataset", "add", "labs", str(files["csv"]), "--all-columns", *state, cwd=tmp_path).returncode == 0
    ipc = cli("dataset", "add", "cohort-ipc", str(files["feather"]), "--columns", "age", *state, cwd=tmp_path)
    assert ipc.returncode == 0, ipc.stderr

    listed = cli("dataset", "list", "--json", *state, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"cohort", "labs", "cohort-ipc"}
    assert rows["cohort"]["format"] == "parquet"
    assert [c["name"] for c in rows["cohort"]["columns"]] == ["age", "event"]
    assert rows["labs"]["format"] == "csv" and rows["labs"]["row_count"] == 2
    assert rows["cohort-ipc"]["format"] == "arrow_ipc"

    table = cli("dataset", "list", *state, cwd=tmp_path)
    assert table.stdout.splitlines()[0].split() == [
        "ID", "FORMAT", "SOURCE", "STATUS", "ROWS", "UNITS", "COLUMNS", "PATH"
    ]

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
        (["dataset", "add", "Bad_ID", "{parquet}", "--all-columns"], "Bad_ID"),
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
    first = cli("dataset", "add", "cohort", str(files["parquet"]), "--columns", "age", *state, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = cli("dataset", "add", "cohort", str(files["csv"]), "--all-columns", *state, cwd=tmp_path)
    assert again.returncode == 1 and "cohort" in again.stderr
    shown = json.loads(cli("dataset", "show", "cohort", "--json", *state, cwd=tmp_path).stdout)
    assert shown["format"] == "parquet"


def test_config_and_state_dir_together_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dataset", "list", "--config", str(tmp_path / "a.toml"), "--state-dir", str(tmp_path)])
    assert code == 2
    assert "--state-dir is for development instances" in capsys.readouterr().err


def test_keys_generate_writes_a_key_pair(tmp_path: Path) -> None:
    result = cli_process("keys", "generate", "--out", str(tmp_path / "id.key"), cwd=tmp_path)
    assert result.returncode == 0
    assert "fingerprint: SHA256:" in result.stdout
    again = cli_process("keys", "generate", "--out", str(tmp_path / "id.key"), cwd=tmp_path)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_dev_certs_creates_then_reuses(tmp_path: Path) -> None:
    first = cli_process("dev-certs", "--out", str(tmp_path / "pki"), cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.startswith("created")
    second = cli_process("dev-certs", "--out", str(tmp_path / "pki"), cwd=tmp_path)
    assert second.returncode == 0 and second.stdout.startswith("existing")


# ------------------------------------------------------------ explicit exposure and the privacy unit


def _add(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["dataset", "add", *args, "--state-dir", str(tmp_path / "state")])
    out, err = capsys.readouterr()
    return code, out, err


def _registered(tmp_path: Path) -> list[str]:
    from agent.datasets import DatasetRegistry

    return [spec.id for spec in DatasetRegistry(tmp_path / "state" / "datasets.sqlite").list()]


def test_add_without_columns_is_refused_listing_columns_and_identifiers(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _add(tmp_path, capsys, "cohort", str(files["parquet"]))
    assert code == 1
    assert "--columns" in err and "--all-columns" in err
    assert "patient_id, age, event" in err
    assert "look like identifiers: patient_id" in err
    assert "Traceback" not in err
    assert _registered(tmp_path) == []


def test_all_columns_holds_back_identifiers_unless_named(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _add(tmp_path, capsys, "cohort", str(files["parquet"]), "--all-columns")
    assert code == 0
    assert "not exposed (they look like identifiers" in out and "patient_id" in out
    assert main(["dataset", "show", "cohort", "--json", "--state-dir", str(tmp_path / "state")]) == 0
    shown = json.loads(capsys.readouterr().out)
    # Resolved to an explicit list at registration: a column added to the files later is not exposed.
    assert shown["exposed_columns"] == ["age", "event"]

    code, _, err = _add(tmp_path, capsys, "cohort2", str(files["parquet"]), "--all-columns", "--columns", "patient_id")
    assert code == 0
    assert "look like identifiers: patient_id" in err  # exposed knowingly, and still flagged


def test_show_warns_of_identifier_like_exposed_columns(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _add(tmp_path, capsys, "cohort", str(files["parquet"]), "--columns", "patient_id,age")[0] == 0
    assert main(["dataset", "show", "cohort", "--state-dir", str(tmp_path / "state")]) == 0
    out, err = capsys.readouterr()
    assert "warning: dataset 'cohort' exposes columns that look like identifiers: patient_id" in err
    assert "privacy unit: none declared" in out


def test_privacy_unit_is_registered_counted_and_never_exposed(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    table = pa.table({"patient_id": ["a", "a", "b", "c", "c"], "age": [61, 61, 72, 55, 56], "event": [1, 0, 1, 1, 0]})
    pq.write_table(table, tmp_path / "visits.parquet")
    code, out, _ = _add(
        tmp_path, capsys, "visits", str(tmp_path / "visits.parquet"), "--all-columns", "--privacy-unit", "patient_id"
    )
    assert code == 0
    assert "privacy unit: patient_id (never exposed, 3 units)" in out
    assert main(["dataset", "show", "visits", "--json", "--state-dir", str(tmp_path / "state")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["privacy_unit"] == "patient_id" and shown["unit_count"] == 3 and shown["row_count"] == 5
    assert [c["name"] for c in shown["columns"]] == ["age", "event"]
    assert shown["exposed_columns"] == ["age", "event"]


def _unit_files(tmp_path: Path, kind: str) -> Path:
    if kind == "null":
        pq.write_table(pa.table({"patient_id": ["a", None], "age": [1, 2]}), tmp_path / "bad.parquet")
        return tmp_path / "bad.parquet"
    if kind == "list":
        pq.write_table(pa.table({"patient_id": [[1], [2]], "age": [1, 2]}), tmp_path / "bad.parquet")
        return tmp_path / "bad.parquet"
    if kind == "float":
        pq.write_table(pa.table({"patient_id": [1.0, 2.0], "age": [1, 2]}), tmp_path / "bad.parquet")
        return tmp_path / "bad.parquet"
    if kind == "missing":
        pq.write_table(pa.table({"age": [1, 2]}), tmp_path / "bad.parquet")
        return tmp_path / "bad.parquet"
    directory = tmp_path / "parts"
    directory.mkdir()
    pq.write_table(pa.table({"patient_id": [1, 2], "age": [1, 2]}), directory / "a.parquet")
    pq.write_table(pa.table({"patient_id": ["3", "4"], "age": [1, 2]}), directory / "b.parquet")
    return directory


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("missing", ["'patient_id' not found in", "bad.parquet"]),
        ("null", ["'patient_id'", "null", "bad.parquet"]),
        ("list", ["'patient_id'", "list<", "bad.parquet"]),
        ("float", ["'patient_id'", "type double"]),
        ("type_change", ["'patient_id'", "b.parquet", "a.parquet", "string", "int64"]),
    ],
)
def test_bad_privacy_unit_is_refused_naming_file_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, names: list[str]
) -> None:
    path = _unit_files(tmp_path, kind)
    code, _, err = _add(tmp_path, capsys, "bad", str(path), "--columns", "age", "--privacy-unit", "patient_id")
    assert code == 1, err
    assert "dataset 'bad' not added" in err
    for name in names:
        assert name in err
    assert "Traceback" not in err
    assert _registered(tmp_path) == []


def test_privacy_unit_listed_in_columns_is_refused(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _add(
        tmp_path, capsys, "cohort", str(files["parquet"]), "--columns", "age,patient_id", "--privacy-unit", "patient_id"
    )
    assert code == 1, err
    assert "--columns: 'patient_id' is the privacy unit" in err
    assert _registered(tmp_path) == []


def test_all_columns_never_exposes_the_unit_even_when_named(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _add(
        tmp_path, capsys, "cohort", str(files["parquet"]), "--all-columns", "--columns", "patient_id",
        "--privacy-unit", "patient_id",
    )
    assert code == 1 and "is the privacy unit" in err
    assert _registered(tmp_path) == []
