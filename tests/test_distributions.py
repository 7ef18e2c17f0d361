"""The hospital installs the daemon only: its modules, wheel and requirements carry none of the
sponsor's code (edge_sponsor: coordinator, publisher tooling, demo) nor what only that code needs."""

from __future__ import annotations

import ast
import email.parser
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
# Top-level modules the daemon must not import: the sponsor's package and the
# libraries only it depends on.
SPONSOR_ONLY = ("edge_sponsor", "rich", "sklearn")
SPONSOR_ONLY_DISTRIBUTIONS = {"edge-agent-sponsor", "rich", "scikit-learn"}


def _imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file, nested ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_daemon_module_imports_sponsor_code() -> None:
    # Static, so that an import inside a function (run only by some command) counts too.
    offending = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted((REPO / "agent").rglob("*.py"))
        for name in sorted(_imported_modules(path))
        if name.split(".")[0] in SPONSOR_ONLY
    ]
    assert offending == []


# Runs with the sponsor's modules made unimportable: every daemon module must
# still import, and the edge-agent command must still build its parser.
WITHOUT_SPONSOR = f"""
import importlib, pkgutil, sys

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SPONSOR_ONLY!r}:
            raise ImportError(f"{{name}} is not installed with the daemon")
        return None

sys.meta_path.insert(0, Absent())
import agent
for module in pkgutil.walk_packages(agent.__path__, "agent."):
    if module.name != "agent.__main__":
        importlib.import_module(module.name)
from agent.cli.main import build_parser
commands = build_parser()._subparsers._group_actions[0].choices
print(" ".join(sorted(commands)))
"""


def test_the_daemon_imports_and_parses_without_the_sponsor_modules(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_SPONSOR], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "audit",
        "budget",
        "dataset",
        "dev-certs",
        "doctor",
        "keys",
        "package",
        "policy",
        "serve",
    ]


def _build_daemon_wheel(tmp_path: Path) -> Path:
    """The wheel `make deb` ships, built by setuptools from a copy of the daemon's project files."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "agent", project / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    build = f"import setuptools.build_meta as backend; print(backend.build_wheel({str(out)!r}))"
    result = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, cwd=project, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return out / result.stdout.strip().splitlines()[-1]


def test_the_daemon_wheel_carries_only_the_daemon(tmp_path: Path) -> None:
    with zipfile.ZipFile(_build_daemon_wheel(tmp_path)) as wheel:
        names = wheel.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert {name.split("/")[0] for name in names} == {"agent", dist_info}
    assert "agent/cli/main.py" in names and "agent/server/daemon.py" in names
    moved = ("agent/coordinator/", "agent/publisher/", "agent/demo/", "agent/cli/coordinate.py", "agent/cli/demo.py")
    assert [name for name in names if name.startswith(moved)] == []
    required = {Requirement(text).name for text in metadata.get_all("Requires-Dist") or []}
    assert "onnxruntime" in required
    assert required & SPONSOR_ONLY_DISTRIBUTIONS == set()
    assert "edge-agent = agent.cli.main:main" in entry_points and "edge-sponsor" not in entry_points


def test_the_two_distributions_are_released_together() -> None:
    daemon = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    sponsor = tomllib.loads((REPO / "sponsor" / "pyproject.toml").read_text())["project"]
    assert sponsor["version"] == daemon["version"]
    pins = [Requirement(text) for text in sponsor["dependencies"] if Requirement(text).name == daemon["name"]]
    assert [str(pin.specifier) for pin in pins] == [f"=={daemon['version']}"]
    assert "rich" in {Requirement(text).name for text in sponsor["dependencies"]}
    assert not any(Requirement(text).name == "rich" for text in daemon["dependencies"])
