"""Starts `edge-agent serve` on the embedded defaults as a separate process,
registers a sample dataset, and shows what a coordinator sees over mTLS."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.datasets import DatasetFormat, DatasetRegistry, DatasetSource, DatasetSpec
from agent.identity.development_pki import DevelopmentPki
from edge_sponsor.coordinator.client import AgentClient, ClientCredentials, Units, dataset_format_name
from edge_sponsor.demo.processes import DemoError, sigterm_interrupts, stop_child, wait_for_port
from edge_sponsor.demo.sample_cohort import EXPOSED_COLUMNS, write_cohort


def _show(out: TextIO, info: pb.AgentInfo, datasets: list[pb.Dataset], health: str) -> None:
    print(f"agent {info.agent_id} {info.version} ({info.api_version})", file=out)
    print(f"  identity key:     {info.public_key_fingerprint}", file=out)
    print(f"  server time:      {info.server_time.ToDatetime().isoformat()}Z", file=out)
    print(f"  capabilities:     {', '.join(info.capabilities)}", file=out)
    print(f"  you are:          {info.caller_identity}", file=out)
    print(f"  health:           {health}", file=out)
    for dataset in datasets:
        upper = dataset.row_count.upper or "inf"
        fmt = dataset_format_name(dataset.format)
        print(f"dataset {dataset.id}: {fmt}, rows in [{dataset.row_count.lower}, {upper})", file=out)
        print(f"  {Units.of_dataset(dataset).describe()}", file=out)
        print(f"  {dataset.description}", file=out)
        for column in dataset.columns:
            print(f"  - {column.name}: {column.arrow_type}", file=out)


def run_foundation_demo(state_dir: Path | None = None, out: TextIO = sys.stdout) -> None:
    with sigterm_interrupts():
        _run_foundation_demo(state_dir, out)


def _run_foundation_demo(state_dir: Path | None, out: TextIO) -> None:
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as scratch:
        state = state_dir or Path(scratch) / "state"
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        dataset_path = write_cohort(Path(scratch) / "data" / "cardio-cohort.parquet")
        DatasetRegistry(state / "datasets.sqlite").add(
            DatasetSpec(
                id="cardio-demo",
                path=dataset_path,
                format=DatasetFormat.PARQUET,
                description="Synthetic cardiovascular cohort (demo); patient_id is not exposed",
                columns=EXPOSED_COLUMNS,
                source=DatasetSource.REGISTRY,
                privacy_unit="patient_id",
            )
        )
        port_file = Path(scratch) / "port"
        log_path = Path(scratch) / "agent.log"
        command = [
            sys.executable,
            "-m",
            "agent",
            "serve",
            "--state-dir",
            str(state),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
        ]
        print(f"$ edge-agent serve --state-dir {state} --listen 127.0.0.1:0", file=out, flush=True)
        with log_path.open("wb") as log:
            # Its own session: a Ctrl-C at the terminal reaches only the demo,
            # which then stops the agent itself, in order, before the temp
            # dir goes away.
            process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True
            )
            try:
                port = wait_for_port(port_file, process, timeout=30)
                pki = DevelopmentPki(state / "dev-pki")
                credentials = ClientCredentials.from_files(pki.ca_cert, pki.coordinator_cert, pki.coordinator_key)
                with AgentClient(f"127.0.0.1:{port}", credentials, timeout=10) as client:
                    client.wait_until_ready(10)
                    info = client.get_info()
                    datasets = client.list_datasets()
                    health = client.health()
                print(f"connected to 127.0.0.1:{port} with mutual TLS as the development coordinator\n", file=out)
                _show(out, info, datasets, health)
            finally:
                try:
                    stop_child(process, out)
                finally:
                    if process.poll() is None:  # interrupted while stopping it
                        process.kill()
                        process.wait()
        if process.returncode != 0:
            raise DemoError(f"the agent exited with code {process.returncode}; its log:\n{log_path.read_text()}")
