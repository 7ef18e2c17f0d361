"""Regenerates the Python code for the API from protos/ into agent/api/.

Run `make protos` after editing a .proto. The output is committed so that the
daemon needs no code generator at install time; tests/test_generated_code.py
regenerates into a temporary directory and fails when the committed files are
stale. grpcio-tools and mypy-protobuf are pinned in pyproject.toml's dev extra
because their output differs between versions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# The protos are mapped into the import path agent/api/ so that the generated
# modules import each other as agent.api.edge_agent.v1.*.
VIRTUAL_ROOT = "agent/api"


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    scripts = Path(sysconfig.get_path("scripts"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{VIRTUAL_ROOT}={PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        *[f"{VIRTUAL_ROOT}/{p}" for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = out_dir / VIRTUAL_ROOT
    for directory in [generated, *[d for d in generated.rglob("*") if d.is_dir()]]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")
    return sorted(p for p in generated.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="output root (default: repo)")
    args = parser.parse_args()
    if args.out is None:
        staging = ROOT / "build" / "protos"
        shutil.rmtree(staging, ignore_errors=True)
        files = generate(staging)
        target = ROOT / VIRTUAL_ROOT / "edge_agent"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(staging / VIRTUAL_ROOT / "edge_agent", target)
        shutil.rmtree(staging)
        print(f"generated {len(files)} files into {target.relative_to(ROOT)}")
    else:
        files = generate(args.out)
        print(f"generated {len(files)} files into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
