"""Bad input to `edge-sponsor coordinate` and `edge-sponsor demo`: exit 2, one line naming what is wrong,
nothing started and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.coordinator.test_federation_file import GOOD


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_sponsor", *args], capture_output=True, text=True, timeout=120, check=False
    )


def usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_coordinate_train_names_a_missing_package_and_a_bad_round_count(tmp_path: Path) -> None:
    federation = tmp_path / "federation.toml"
    federation.write_text(GOOD)
    missing = tmp_path / "absent.zip"
    usage_error(
        cli("coordinate", "train", str(federation), "--package", str(missing), "--out", str(tmp_path / "run")),
        str(missing),
        "cannot read the package",
    )
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip archive")
    usage_error(
        cli("coordinate", "train", str(federation), "--package", str(garbage), "--out", str(tmp_path / "run")),
        str(garbage),
    )
    usage_error(
        cli("coordinate", "train", str(federation), "--package", str(garbage), "--out", "run", "--rounds", "0"),
        "--rounds must be between 1 and 100000",
    )
    assert not (tmp_path / "run").exists()


def test_coordinate_check_names_a_missing_federation_file(tmp_path: Path) -> None:
    usage_error(cli("coordinate", "check", str(tmp_path / "nope.toml")), str(tmp_path / "nope.toml"), "not found")


def test_demo_refuses_bad_flags_before_starting_anything(tmp_path: Path) -> None:
    usage_error(cli("demo", "--rounds", "0"), "--rounds must be between 1 and 10000")
    (tmp_path / "keep.txt").write_text("mine")
    usage_error(cli("demo", "--workdir", str(tmp_path)), f"--workdir {tmp_path} is not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
