"""Load on one agent: concurrent coordinators (readers, task clients, slow and cancelling
clients) against `edge-agent serve` spawned with mTLS on loopback; prints throughput,
p50/p99 per call, statuses, the daemon's RSS over time and the budget at the end.

Run: .venv/bin/python bench/load.py [--seconds 60] [--readers 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rpc_latency import make_pki  # noqa: E402
from edge_sponsor.coordinator.client import AgentClient  # noqa: E402
from tests.conftest import spawn_agent, stop_agent  # noqa: E402
from tests.packages.package_builders import good_package, new_key  # noqa: E402
from tests.reliability.loadgen import LoadPlan, run_load  # noqa: E402
from tests.tasks.test_run_task_rpc import cohort_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--task-clients", type=int, default=4)
    parser.add_argument("--budget", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-agent-load-") as temp:
        work = Path(temp)
        pki = make_pki(work / "pki")
        publisher = new_key()
        config = cohort_config(work, pki, publisher, budget=args.budget, max_concurrent=4)
        agent = spawn_agent(["--config", str(config)], work)
        assert agent.process is not None
        try:
            with AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30) as client:
                digest = client.upload_package(good_package(publisher)).digest
            plan = LoadPlan(seconds=args.seconds, readers=args.readers, task_clients=args.task_clients)
            report = asyncio.run(run_load(agent.address, pki.credentials(), digest, plan, agent.process.pid))
        finally:
            stop_agent(agent)
    print(f"load: {args.readers} readers, {args.task_clients} task clients, 2 slow, 2 cancelling, {args.seconds:g} s")
    print("\n".join(report.lines(plan.warmup_seconds)))


if __name__ == "__main__":
    main()
