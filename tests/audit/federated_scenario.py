"""A real federated run that leaves every kind of event a compliance officer must see.

Three hospital agents as `edge-agent serve` processes (the demo's hospitals,
real mutual TLS, a real signed package) train for three rounds; then, at the
first hospital, a coordinator uploads a tampered package (refused), asks for a
purpose the policy does not allow (denied), walks away from an admitted task
before sending its parameters (failed, refunded), a reviewer rejects the package with `edge-agent package reject`,
and the next task with it is refused. The agents are stopped with SIGTERM.
Each hospital's dataset declares its privacy unit (`patient_id`, as the demo's
agent.toml does), so every task entry says that its ε is per patient.

tests/fixtures/audit-v0.1/ holds the log the same scenario left with version
0.1 of the agent (its imports then pointed at agent.coordinator, agent.demo).
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.identity.agent_key import generate_key_file
from agent.identity.development_pki import DEV_COORDINATOR_URI
from agent.tasks.kinds.dp_gradient import DpGradient
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError, ClientCredentials
from edge_sponsor.coordinator.progress import observer_for
from edge_sponsor.coordinator.study import run_study
from edge_sponsor.coordinator.tasks import tensor_header
from edge_sponsor.demo.federated import DATASET_ID, DEMO_PLAN, PURPOSE, federation_for, prepare, running_hospitals

RUN_ID = "audit-scenario"
REVIEWER = "Dr. Compliance Officer"


@dataclass(frozen=True)
class Scenario:
    hospital: Path  # the first hospital's directory: agent.toml, state/, state/audit/
    package_digest: str
    coordinator: str


def run_scenario(root: Path) -> Scenario:
    setup = prepare(root)
    plan = dataclasses.replace(DEMO_PLAN, rounds=3, evaluate_every=3)
    reviewer_key = root / "reviewer.key"
    generate_key_file(reviewer_key)
    with running_hospitals(setup, io.StringIO()) as agents:
        federation = federation_for(agents, setup.pki, plan, root / "federation.toml")
        with observer_for(io.StringIO(), plan.rounds) as observer:
            run_study(federation, setup.package, root / "run", observer, run_id=RUN_ID)
        first = agents[0]
        config = first.directory / "agent.toml"
        credentials = ClientCredentials.from_files(
            setup.pki.ca_cert, setup.pki.coordinator_cert, setup.pki.coordinator_key
        )
        gradient = DpGradient(clip_norm=1.0, noise_multiplier=3.0, sampling_rate=0.5)
        parameters = setup.package.ordered(setup.package.initial_parameters(), gradient)
        with AgentClient(f"127.0.0.1:{first.port}", credentials, server_name="localhost", timeout=60) as client:
            archive = bytearray(setup.package_path.read_bytes())
            archive[len(archive) // 2] ^= 0xFF
            _expect_refusal(lambda: client.upload_package(bytes(archive)))

            def spec(purpose: str, correlation_id: str) -> pb.TaskSpec:
                return pb.TaskSpec(
                    kind=pb.TASK_KIND_DP_GRADIENT,
                    package_digest=setup.package.digest,
                    dataset_id=DATASET_ID,
                    hyperparameters=gradient.to_wire(),
                    run_id=RUN_ID,
                    round=99,
                    correlation_id=correlation_id,
                    purpose=purpose,
                )

            _expect_refusal(lambda: client.run_task(spec("marketing", "denied-purpose"), parameters))

            walked_away = spec(PURPOSE, "walked-away")
            walked_away.parameters.extend(tensor_header(name, array) for name, array in parameters)
            _walk_away_after_admission(f"127.0.0.1:{first.port}", credentials, walked_away)

            reject = [sys.executable, "-m", "agent", "package", "reject", setup.package.digest, "--config", str(config)]
            reject += ["--reason", "the study protocol was withdrawn", "--reviewer-key", str(reviewer_key)]
            subprocess.run([*reject, "--reviewer", REVIEWER], check=True, capture_output=True, timeout=60)
            _expect_refusal(lambda: client.run_task(spec(PURPOSE, "after-rejection"), parameters))
    return Scenario(first.directory, setup.package.digest, DEV_COORDINATOR_URI)


def _walk_away_after_admission(address: str, credentials: ClientCredentials, spec: pb.TaskSpec) -> None:
    """A coordinator that has its task admitted, then cancels the call before sending parameters."""
    channel = grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(credentials.ca_cert, credentials.key, credentials.cert),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    hold = threading.Event()

    def requests() -> Iterator[pb.RunTaskRequest]:
        yield pb.RunTaskRequest(spec=spec)
        hold.wait(60)

    try:
        call = pb_grpc.AgentStub(channel).RunTask(requests(), timeout=60)
        if next(call).WhichOneof("event") != "accepted":
            raise AssertionError("the task was not admitted")
        call.cancel()
    finally:
        hold.set()
        channel.close()


def _expect_refusal(call: Callable[[], object]) -> None:
    try:
        call()
    except AgentRpcError:
        return
    raise AssertionError("the agent accepted what it should have refused")
