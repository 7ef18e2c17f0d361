"""The atheris harnesses under fuzz/ for a fixed number of iterations (a fixed seed, so a
failure reproduces); `make fuzz` runs them for longer with random seeds."""

from __future__ import annotations

import base64
import contextlib
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


# RunTask specs the task_request harness once crashed on (seed 1): a sampling rate of
# 1.83e-322, whose accounting grid overflowed 10**325, and a noise multiplier near 1e300,
# whose square overflowed when composed with the count's. Each is now a typed refusal or
# accepted.
FOUND = [
    "Cp8BCAISR3NoYTI1NjphYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFi"
    "GgZjb2hvcnQiJgkAAAAAAADwPxGamZmZmZnxPxklAAAAAAAAACAFKZqZmZmZmbk/KgoKAXcQARoBBCAmMgNydW44A0IFcnVuLzNKCHJl"
    "c2VhcmNo",
    "Cp8BCAISR3NoYTI1NjphYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFi"
    "GgZjb2hvcnQiQAkAAAAAAADwPxGamZmZmZnxYBl7FK5H4XqEPyAFKZqZmZmZmbk/KgoKJQAAAAAAAAAmMgNydW4wA0IFcnVuLzNKCHJl"
    "c2VhcmNo",
]


@pytest.mark.parametrize("encoded", FOUND)
def test_specs_the_harness_crashed_on_are_refused_or_accepted(encoded: str) -> None:
    from agent.api.edge_agent.v1 import agent_pb2 as pb
    from agent.server.task_endpoints import specification
    from agent.tasks.errors import TaskSpecError

    request = pb.RunTaskRequest.FromString(base64.b64decode(encoded))
    with contextlib.suppress(TaskSpecError):
        specification(request.spec)
