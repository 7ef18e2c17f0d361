"""The committed agent/api code must be exactly what protos/ generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    fresh_root = tmp_path / "agent" / "api" / "edge_agent"
    committed_root = REPO / "agent" / "api" / "edge_agent"
    fresh = {p.relative_to(fresh_root): p.read_bytes() for p in fresh_root.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(committed_root): p.read_bytes()
        for p in committed_root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert fresh.keys() == committed.keys(), "generated file set differs: run `make protos`"
    stale = sorted(str(name) for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated code in agent/api/edge_agent ({', '.join(stale)}): run `make protos`"
