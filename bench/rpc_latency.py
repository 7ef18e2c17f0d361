"""Latency of the agent's calls as a coordinator sees them, over mutual TLS on loopback.

1. GetInfo (policy decision + fsynced audit entry) next to the standard
   Health.Check (neither) on the same channel: the reference floor.
2. A dp_gradient task end to end (spec, admission, ledger reservation, worker
   process, commit, result) against `edge-agent serve` started as the
   console script, the way systemd runs it.

Run: .venv/bin/python bench/rpc_latency.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "packages"))

from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc  # noqa: E402
from agent.identity.certificates import CertificateAuthority  # noqa: E402
from edge_sponsor.coordinator.client import AgentClient  # noqa: E402
from edge_sponsor.coordinator.tasks import run_task  # noqa: E402
from tests.conftest import COORDINATOR_URI, Pki, start_in_process, write_config  # noqa: E402
from tests.packages.package_builders import good_package, new_key  # noqa: E402
from tests.tasks.test_run_task_rpc import PARAMETERS, cohort_table, policy_text, secure_channel, spec  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    return sorted(values)[min(len(values) - 1, int(fraction * len(values)))] * 1000


def make_pki(directory: Path) -> Pki:
    directory.mkdir()
    ca = CertificateAuthority.create("Bench CA")
    ca.write(directory / "ca.crt", directory / "ca.key")
    ca.issue_server().write(directory / "agent.crt", directory / "agent.key")
    ca.issue_client("bench", uri=COORDINATOR_URI).write(directory / "coordinator.crt", directory / "coordinator.key")
    return Pki(directory)


def unary_latency(work: Path, pki: Pki, calls: int) -> None:
    work.mkdir()
    agent = start_in_process(write_config(work, pki))
    try:
        with AgentClient(f"127.0.0.1:{agent.port}", pki.credentials(), server_name="localhost", timeout=10) as client:
            for _ in range(20):
                client.get_info()
                client.health()
            info: list[float] = []
            health: list[float] = []
            for _ in range(calls):
                started = time.perf_counter()
                client.get_info()
                info.append(time.perf_counter() - started)
                started = time.perf_counter()
                client.health()
                health.append(time.perf_counter() - started)
    finally:
        agent.stop()
    print(
        f"GetInfo               p50 {percentile(info, 0.5):.2f} ms  p99 {percentile(info, 0.99):.2f} ms"
        f"  ({calls} calls)"
    )
    print(f"Health.Check (floor)  p50 {percentile(health, 0.5):.2f} ms  p99 {percentile(health, 0.99):.2f} ms")
    print(f"ratio GetInfo/Health  {statistics.median(info) / statistics.median(health):.1f}x (policy + fsynced audit)")


def task_latency(work: Path, pki: Pki, tasks: int) -> None:
    publisher = new_key()
    data = work / "data"
    data.mkdir(parents=True)
    pq.write_table(cohort_table(400), data / "cohort.parquet")
    config = write_config(
        work,
        pki,
        policy=policy_text(publisher, budget=100.0),
        extra=f'\n[[datasets]]\nid = "cohort"\npath = "{data / "cohort.parquet"}"\n',
    )
    port_file = work / "port"
    with (work / "agent.log").open("wb") as log:
        process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "edge-agent"), "serve", "--config", str(config),
             "--port-file", str(port_file)],
            stderr=log,
        )
    try:
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None:
                raise SystemExit(f"the agent exited: see {work / 'agent.log'}")
            time.sleep(0.05)
        address = f"127.0.0.1:{int(port_file.read_text())}"
        with AgentClient(address, pki.credentials(), server_name="localhost", timeout=30) as client:
            digest = client.upload_package(good_package(publisher)).digest

        class Uploaded:
            package_digest = digest

        channel = secure_channel(pki, address)
        stub = pb_grpc.AgentStub(channel)
        times: list[float] = []
        for _ in range(tasks):
            started = time.perf_counter()
            run_task(stub, spec(Uploaded), PARAMETERS, timeout=60)  # type: ignore[arg-type]
            times.append(time.perf_counter() - started)
        channel.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    rest = times[1:]
    print(
        f"dp_gradient task      first {times[0] * 1000:.0f} ms (forkserver start), then median "
        f"{statistics.median(rest) * 1000:.0f} ms, min {min(rest) * 1000:.0f} ms"
        f" ({len(rest)} tasks, 400 rows, q=0.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as temp:
        work = Path(temp)
        pki = make_pki(work / "pki")
        unary_latency(work / "unary", pki, args.calls)
        task_latency(work / "task", pki, args.tasks)


if __name__ == "__main__":
    main()
