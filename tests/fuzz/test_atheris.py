"""The atheris harnesses under fuzz/ for a fixed number of iterations (a fixed seed, so a
failure reproduces); `make fuzz` runs them for longer with random seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("harness", "runs"), [("package_verifier.py", 5000), ("task_request.py", 50000)])
def test_harness_finds_no_crash(harness: str, runs: int, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / harness), f"-runs={runs}", "-seed=1", "-rss_limit_mb=2048"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # crash-* reproducers land here, not in the checkout
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {runs} runs" in result.stderr
