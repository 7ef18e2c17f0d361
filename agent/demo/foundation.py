"""Starts `edge-agent serve` on the embedded defaults as a separate process,
registers a sample dataset, and shows what a coordinator sees over mTLS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.coordinator.client import AgentClient, ClientCredentials
from agent.datasets import DatasetFormat, DatasetRegistry, DatasetSource, DatasetSpec
from agent.demo.sample_cohort import EXPOSED_COLUMNS, write_cohort
from agent.identity.development_pki import DevelopmentPki


class DemoError(Exception):
    """The demo could not run; the message says which step failed."""


def _wait_for_port(port_file: Path, process: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the agent exited early with code {process.returncode}")
        text = port_file.read_text() if port_file.exists() else ""
        if text.strip().isdigit():
            return int(text)
        time.sleep(0.05)
    raise DemoError(f"the agent did not start listening within {timeout} s")


def _show(out: TextIO, info: pb.AgentInfo, datasets: list[pb.Dataset], health: str) -> None:
    print(f"agent {info.agent_id} {info.version} ({info.api_version})", file=out)
    print(f"  identity key:     {info.public_key_fingerprint}", file=out)
    print(f"  server time:      {info.server_time.ToDatetime().isoformat()}Z", file=out)
    print(f"  capabilities:     {', '.join(info.capabilities)}", file=out)
    print(f"  you are:          {info.caller_identity}", file=out)
    print(f"  health:           {health}", file=out)
    for dataset in datasets:
        upper = dataset.row_count.upper or "inf"
        fmt = pb.DatasetFormat.Name(dataset.format).removeprefix("DATASET_FORMAT_").lower()
        print(f"dataset {dataset.id}: {fmt}, rows in [{dataset.row_count.lower}, {upper})", file=out)
        print(f"  {dataset.description}", file=out)
        for column in dataset.columns:
            print(f"  - {column.name}: {column.arrow_type}", file=out)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turns the first SIGTERM into KeyboardInterrupt so that `finally` blocks run.

    Python's default for SIGTERM is to die on the spot, which would leave the
    child agent running and the temp dir (with a CA private key) on disk.
    Later signals are ignored so that they cannot cut the clean-up short.
    Raising is all the handler does; it neither logs nor takes locks.
    """
    if sys.platform == "win32":  # pragma: no cover - the agent is POSIX-only
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous_int = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _stop_child(process: subprocess.Popen[bytes], out: TextIO) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    print(f"\nagent stopped on SIGTERM with exit code {code}", file=out)


def run_foundation_demo(state_dir: Path | None = None, out: TextIO = sys.stdout) -> None:
    with _sigterm_interrupts():
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
                port = _wait_for_port(port_file, process, timeout=30)
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
                    _stop_child(process, out)
                finally:
                    if process.poll() is None:  # interrupted while stopping it
                        process.kill()
                        process.wait()
        if process.returncode != 0:
            raise DemoError(f"the agent exited with code {process.returncode}; its log:\n{log_path.read_text()}")
