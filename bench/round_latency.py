"""Round latency of federated training with negligible compute: edge-agent vs Flower's deployment engine.

    make bench                  # after dp_throughput.py, with --flower-rounds 5 (time)
    .venv-bench/bin/python bench/round_latency.py [--sizes 10k 1M 25M] [--rounds 20] [--warmup 2]
        [--flower-rounds N] [--rows 24] [--skip-agent] [--skip-flower] [--skip-stream] [--skip-floor]
        [--stream-sizes 250M 50M] [--workdir DIR]

1. **edge-agent**: three agents as `edge-agent serve` processes on loopback, mutual TLS,
   each with its own agent.toml, policy.toml, identity key and a synthetic dataset of
   ``--rows`` rows. A publisher key signs one package per model size; each policy trusts
   it and needs no approval (as in `make demo`); the upload must come back APPROVED.
   The model is bilinear: one weight matrix W [a, b] (a * b = P float32 parameters),
   per-example loss ``y * u^T W v`` with ``u = x A``, ``v = x B`` (A, B constants in the
   graph), so the per-example gradient is the outer product ``y u v^T``, which the
   agent's batched wrapper keeps factored: nothing per row grows with P *if* the batching
   compiler accepts the graph. Whether it does is printed per size: the worker builds
   ``CompiledWrapper(grad, manifest, GRADIENT)`` in AUTO mode, and the bench makes the
   same call on the same package bytes.
   A round, as the coordinator sees it: the three channels stay open across rounds; the
   current parameters go to all three agents at once, one dp_gradient task each
   (`AgentClient.run_task`, the product's client); when all three results are in they
   are summed and W moves by a small step, so every round sends new parameters, as
   training would. ``--warmup`` rounds are reported apart from the ``--rounds`` timed,
   and each task's time is split at the worker's progress events.
   Printed beside the round: its median minus the slowest task's computing phase
   (rows and DP noise), i.e. what transport, admission, durability and hand-over add.
   **Floor**: the same bytes each way through raw grpcio with mutual TLS between three
   echo-server processes (bench/grpc_floor.py), same sizes and rounds, in this run:
   what no agent built on grpcio can go below on this machine.
   **CPU per round**: user + system time of every process (this one, the agents, their
   workers; the floor's client and servers) over the timed rounds, from /proc. Divided
   by the cores it is a lower bound on the round: when the median is close to it, the
   round is CPU-bound and only less CPU, not less waiting, makes it shorter.
2. **stream**: a fresh agent daemon (so that its peak RSS is this test's) returns one
   float32 gradient of ``--stream-sizes[0]`` (250M: 1 GB) through RunTask to a separate
   coordinator process (so that its peak RSS is its own), which times the result from
   the result header to the completed event. Peak RSS (VmHWM) of the coordinator, the
   daemon and the task worker are compared with 3x the tensor. A failure (refused
   package, memory limit, message size, deadline) is printed as such, and the next size
   is tried so that the transfer is still measured.
3. **Flower** 1.42.0 (an environment of its own, ``.venv-flower``: flwr needs protobuf
   < 7, the agent >= 7.35): SuperLink and three SuperNodes as processes on loopback in
   **insecure** mode (no TLS), ``flwr run`` of ``bench/flower_round`` (ServerApp with
   FedAvg, ClientApps that return the parameters they received), the same sizes as one
   float32 array; per-round time as the ServerApp sees it. Once with Flower's defaults,
   once tuned: the SuperExec's task poll (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, 1 s by
   default) and the ServerApp's reply poll (3 s, fixed in ``send_and_receive``) at
   0.05 s; the SuperNode's 3 s idle poll has no knob in 1.42.

Everything runs on one machine with the coordinator (2 cores here), beside whatever
else runs on it: the mean load average is printed per part. Not run by `make test`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from grpc_floor import FloorSeries, floor_rounds  # noqa: E402
from process_tree import descendants, tree_cpu_seconds, vm_kib  # noqa: E402

from agent.api.edge_agent.v1 import agent_pb2 as pb  # noqa: E402
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc  # noqa: E402
from agent.identity.agent_key import AgentKey, generate_key_file  # noqa: E402
from agent.identity.development_pki import DEV_COORDINATOR_URI, DevelopmentPki, ensure_development_pki  # noqa: E402
from agent.packages.canonical import canonical_json, parse_strict_json  # noqa: E402
from agent.packages.errors import PackageRejected  # noqa: E402
from agent.packages.manifest import parse_manifest  # noqa: E402
from agent.runtime.isolation import GraphRole  # noqa: E402
from agent.runtime.sessions import CompiledWrapper  # noqa: E402
from agent.tasks.tensors import TensorDecl  # noqa: E402
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError, ClientCredentials, channel_options  # noqa: E402
from edge_sponsor.coordinator.tasks import ParameterSet, TaskProtocolError, run_task  # noqa: E402
from edge_sponsor.demo.federated import agent_toml  # noqa: E402
from edge_sponsor.demo.processes import wait_for_port  # noqa: E402
from edge_sponsor.publisher.packaging import (  # noqa: E402
    FeatureColumn,
    assemble_package,
    complete_manifest,
    zoo_graphs,
    zoo_manifest_fields,
)
from edge_sponsor.publisher.zoo.graph import FLOAT, GraphBuilder, clipped, outer_product  # noqa: E402
from edge_sponsor.publisher.zoo.spec import LabelSpec, ParameterSpec, ZooModel, zero_parameters  # noqa: E402

FEATURES = 4
DATASET = "bench"
PURPOSE = "round-latency-benchmark"
PUBLISHER = "edge-agent-bench"
CLIP, SIGMA, Q = 1.0, 3.0, 0.5
EPSILON_BUDGET = 100.0  # the policy's maximum
DELTA = 1e-5
STEP = 1e-3  # the coordinator's step on W after each round
FLOWER_POLL = 0.05
REFERENCE = (
    "issue's reference: Flower 6.2 s/round at 1M (2.6 s poll interval tuned), 8.9 s at 25M; "
    "raw grpcio 13 ms for three concurrent 4 MB-each-way calls"
)
# The 1 GB stream's agent: room for the parameters, the Scan's float64 state and the result.
STREAM_MEMORY_MB = 20 * 1024
STREAM_TASK_SECONDS = 1800


def parse_size(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    suffix = text[-1].lower()
    return int(float(text[:-1]) * units[suffix]) if suffix in units else int(text)


def size_label(parameters: int) -> str:
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if parameters >= scale and parameters % (scale // 1000 or 1) == 0:
            return f"{parameters / scale:g}{unit}"
    return str(parameters)


def matrix_shape(parameters: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b == parameters``, ``a`` the largest divisor up to the square root
    (the same split as bench/flower_round's ServerApp)."""
    a = math.isqrt(parameters)
    while parameters % a:
        a -= 1
    return a, parameters // a


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


class Poller:
    """Calls ``sample()`` every ``period`` seconds on a thread of its own while the with-block runs."""

    def __init__(self, period: float) -> None:
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.sample()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class LoadSampler(Poller):
    """Samples the 1-minute load average every 2 s while a part of the bench runs."""

    def __init__(self) -> None:
        super().__init__(2.0)
        self.samples: list[float] = [os.getloadavg()[0]]

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)


def gib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 2**20:.2f} GiB"


# -- the package -----------------------------------------------------------------------------


def _bilinear_graph(role: str, a: int, b: int, ranges: dict[str, tuple[float, float]]) -> Any:
    g = GraphBuilder(f"bench_bilinear_{role}", "bench/round_latency.py: y * u^T W v with u = x A, v = x B")
    w = g.add_input("W", FLOAT, [a, b])
    x = g.add_input("x", FLOAT, [FEATURES])
    y = g.add_input("y", FLOAT, [])
    rng = np.random.default_rng(1)
    u = g.op("MatMul", x, g.constant(rng.standard_normal((FEATURES, a)).astype(np.float32) / math.sqrt(a)))
    v = g.op("MatMul", x, g.constant(rng.standard_normal((FEATURES, b)).astype(np.float32) / math.sqrt(b)))
    uy = g.op("Mul", u, y)
    # Only the Scan path and the eval graph compute this O(P) value; the batched
    # wrapper's tail needs the gradient's factors alone.
    loss = g.op("ReduceSum", g.op("Mul", uy, g.op("MatMul", w, v)), keepdims=0)
    if role == "grad":
        g.add_output(outer_product(g, uy, v), "grad_W", FLOAT, [a, b])
        g.add_output(loss, "loss", FLOAT, [])
    else:
        g.add_output(clipped(g, loss, ranges["loss"], out="clipped_loss"), "loss", FLOAT, [])
    return g.to_model({"zoo.model": "bench_bilinear", "zoo.graph": role})


def _no_inference(params: object) -> Any:
    raise NotImplementedError("the bench packages no inference model (it would embed W)")


def bilinear_model(parameters: int) -> ZooModel:
    a, b = matrix_shape(parameters)
    ranges = {"loss": (-10.0, 10.0)}
    specs = (ParameterSpec("W", (a, b)),)
    return ZooModel(
        name="bench_bilinear",
        description="Bilinear y * u^T W v: per-example gradient y u v^T (an outer product)",
        num_features=FEATURES,
        parameters=specs,
        label_spec=LabelSpec("float32", (), "any number"),
        grad_graph=_bilinear_graph("grad", a, b, ranges),
        eval_graph=_bilinear_graph("eval", a, b, ranges),
        eval_metric_ranges=ranges,
        inference_outputs=(),
        _build_inference=_no_inference,
        _initialize=lambda rng: zero_parameters(specs),
    )


@dataclass(frozen=True)
class Package:
    parameters: int
    shape: tuple[int, int]
    archive: bytes
    mode: str  # what the worker's CompiledWrapper (AUTO) runs: "batched" or "scan" ("refused": no manifest)
    fallback: str  # the batching compiler's (or the manifest parser's) reason for refusing, or ""


def build_package(parameters: int, publisher: AgentKey) -> Package:
    model = bilinear_model(parameters)
    graphs = zoo_graphs(model)  # grad and eval; no inference model (it would embed W)
    fields = zoo_manifest_fields(
        model,
        name=f"{PUBLISHER}/bilinear-{size_label(parameters).lower()}",
        version="1.0.0",
        publisher=PUBLISHER,
        features=[FeatureColumn(f"f{i}", "float64") for i in range(FEATURES)],
        label_columns=["y"],
        task_kinds=["dp_gradient"],
    )
    manifest = complete_manifest(fields, graphs)
    # Not build_package: an archive the agent refuses is still sent, to see how it refuses.
    archive = assemble_package(manifest, graphs, [publisher])
    try:
        parsed = parse_manifest(parse_strict_json(canonical_json(manifest)))
    except PackageRejected as exc:
        return Package(parameters, matrix_shape(parameters), archive, "refused", str(exc))
    # The worker builds CompiledWrapper(grad, manifest, GRADIENT) in AUTO mode: the same call here
    # says whether the agent runs this package as a compiled batch or falls back to Scan.
    wrapper = CompiledWrapper(graphs["grad"], parsed, GraphRole.GRADIENT)
    return Package(parameters, matrix_shape(parameters), archive, wrapper.mode.value, wrapper.fallback_reason or "")


# -- agents ----------------------------------------------------------------------------------


def policy_text(publisher: AgentKey, *, min_cohort: int, memory_mb: int, task_seconds: int) -> str:
    key = base64.b64encode(publisher.public_bytes).decode()
    return f"""# bench/round_latency.py: one coordinator, one dataset, the bench's publisher.
[[coordinators]]
identity = "{DEV_COORDINATOR_URI}"
datasets = ["{DATASET}"]
task_kinds = ["dp_gradient"]

[[datasets]]
id = "{DATASET}"
epsilon_budget = {EPSILON_BUDGET}
delta = {DELTA}
min_cohort_size = {min_cohort}
label_columns = ["y"]
purposes = ["{PURPOSE}"]

[[publishers]]
name = "Edge Agent bench publisher"
public_key = "{key}"

[packages]
require_approval = false

[limits]
max_concurrent_tasks = 2
task_memory_mb = {memory_mb}
task_seconds = {task_seconds}
"""


@dataclass
class AgentProcess:
    name: str
    directory: Path
    process: subprocess.Popen[bytes]
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "agent.log"


def serve_command(config: Path, port_file: Path) -> list[str]:
    console = Path(sys.executable).with_name("edge-agent")
    program = [str(console)] if console.exists() else [sys.executable, "-m", "agent"]
    return [*program, "serve", "--config", str(config), "--port-file", str(port_file)]


def start_agent(
    name: str, root: Path, pki: DevelopmentPki, publisher: AgentKey, rows: int, *, memory_mb: int, task_seconds: int
) -> AgentProcess:
    directory = root / name
    (directory / "data").mkdir(parents=True)
    rng = np.random.default_rng(list(name.encode()))
    columns: dict[str, Any] = {f"f{i}": rng.standard_normal(rows) for i in range(FEATURES)}
    columns["y"] = rng.standard_normal(rows)
    data = directory / "data" / "cohort.parquet"
    pq.write_table(pa.table(columns), data)
    generate_key_file(directory / "identity.key")
    (directory / "policy.toml").write_text(
        policy_text(publisher, min_cohort=min(10, rows), memory_mb=memory_mb, task_seconds=task_seconds)
    )
    config = directory / "agent.toml"
    config.write_text(agent_toml(name, directory, pki, data, "synthetic rows for bench/round_latency.py",
                                 dataset_id=DATASET))
    with (directory / "agent.log").open("wb") as log:
        process = subprocess.Popen(
            serve_command(config, directory / "port"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return AgentProcess(name, directory, process)


@contextlib.contextmanager
def running_agents(
    names: Sequence[str], root: Path, pki: DevelopmentPki, publisher: AgentKey, rows: int, **limits: int
) -> Iterator[list[AgentProcess]]:
    agents: list[AgentProcess] = []
    try:
        for name in names:
            agents.append(start_agent(name, root, pki, publisher, rows, **limits))
        for agent in agents:
            agent.port = wait_for_port(
                agent.directory / "port", agent.process, timeout=60, name=f"agent {agent.name}", log=agent.log
            )
        yield agents
    finally:
        for agent in agents:
            if agent.process.poll() is None:
                agent.process.terminate()
        for agent in agents:
            try:
                agent.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait()


def credentials(pki: DevelopmentPki) -> ClientCredentials:
    return ClientCredentials.from_files(pki.ca_cert, pki.coordinator_cert, pki.coordinator_key)


class BenchError(Exception):
    """A step the benchmark needs did not work; the message says which."""


def upload(client: AgentClient, package: Package) -> str:
    """Uploads and checks that the agent stored it as approved (the policy needs no officer)."""
    stored = client.upload_package(package.archive, timeout=120)
    if stored.status != pb.PACKAGE_STATUS_APPROVED:
        raise BenchError(f"{client.address}: package {stored.name} is {pb.PackageStatus.Name(stored.status)}: "
                         f"{stored.status_reason}")
    return stored.digest


def task_spec(digest: str, run_id: str, round_number: int, site: str) -> pb.TaskSpec:
    return pb.TaskSpec(
        kind=pb.TASK_KIND_DP_GRADIENT,
        package_digest=digest,
        dataset_id=DATASET,
        hyperparameters=pb.DPHyperparameters(clip_norm=CLIP, noise_multiplier=SIGMA, sampling_rate=Q),
        run_id=run_id,
        round=round_number,
        correlation_id=f"{run_id}/{round_number}/{site}",
        purpose=PURPOSE,
    )


# -- 1. rounds on edge-agent ---------------------------------------------------------------


@dataclass
class TaskTimes:
    """One task as the coordinator saw it (perf_counter seconds)."""

    start: float
    computing: float = math.nan  # the worker reported that it is about to read rows
    computed: float = math.nan  # the worker's last step is done (noise added)
    end: float = math.nan


@dataclass
class RoundSeries:
    seconds: list[float] = field(default_factory=list)
    warmup: list[float] = field(default_factory=list)
    tasks: list[TaskTimes] = field(default_factory=list)  # timed rounds only
    # Timed rounds minus their slowest task's computing phase (rows and DP noise): the
    # transport, admission, durability and hand-over that a round costs on top.
    overhead: list[float] = field(default_factory=list)
    epsilon: float = 0.0
    error: str = ""
    load: float = math.nan  # mean 1-minute load average while it ran
    cpu_per_round: float = math.nan  # CPU seconds of the bench, agents and workers per timed round


def _timed_task(client: AgentClient, spec: pb.TaskSpec, weights: ParameterSet, timeout: float
                ) -> tuple[npt.NDArray[np.float32], TaskTimes, float]:
    times = TaskTimes(time.perf_counter())

    def progress(fraction: float, stage: str) -> None:
        now = time.perf_counter()
        if stage == "computing" and math.isnan(times.computing):
            times.computing = now
        elif fraction >= 1.0:
            times.computed = now

    expected = [TensorDecl("W", "float32", tuple(weights.tensors[0].header.shape))]
    run = client.run_task(spec, weights, timeout=timeout, on_progress=progress, expected=expected)
    times.end = time.perf_counter()
    return np.asarray(run.tensors["W"], np.float32), times, run.budget_epsilon_spent


def agent_rounds(clients: Sequence[AgentClient], digest: str, package: Package, *, rounds: int, warmup: int,
                 timeout: float) -> RoundSeries:
    series = RoundSeries()
    weights = np.random.default_rng(0).standard_normal(package.shape, dtype=np.float32)
    run_id = f"round-latency-{size_label(package.parameters)}-{os.getpid()}"
    with ThreadPoolExecutor(len(clients), thread_name_prefix="site") as pool:
        cpu_start = math.nan
        for number in range(1, warmup + rounds + 1):
            if number == warmup + 1:
                cpu_start = tree_cpu_seconds(os.getpid())
            started = time.perf_counter()
            # Converted and hashed once per round for all sites, as FederatedTraining does.
            outgoing = ParameterSet.of([("W", weights)])
            futures = [
                pool.submit(_timed_task, client, task_spec(digest, run_id, number, f"site{i}"), outgoing, timeout)
                for i, client in enumerate(clients)
            ]
            try:
                results = [future.result() for future in futures]
            except AgentRpcError as exc:
                series.error = f"round {number}: {exc}"
                return series
            total = results[0][0].copy()
            for gradient, _, _ in results[1:]:
                total += gradient
            weights = weights - np.float32(STEP) * total
            elapsed = time.perf_counter() - started
            if number <= warmup:
                series.warmup.append(elapsed)
            else:
                series.seconds.append(elapsed)
                series.tasks += [times for _, times, _ in results]
                computing = [times.computed - times.computing for _, times, _ in results]
                if all(math.isfinite(value) for value in computing):
                    series.overhead.append(elapsed - max(computing))
            series.epsilon = max(epsilon for _, _, epsilon in results)
    series.cpu_per_round = (tree_cpu_seconds(os.getpid()) - cpu_start) / rounds
    return series


def phase_line(series: RoundSeries) -> str:
    def median_ms(values: Sequence[float]) -> str:
        finite = [v for v in values if math.isfinite(v)]
        return f"{statistics.median(finite) * 1000:.0f}" if finite else "?"

    tasks = series.tasks
    before = median_ms([t.computing - t.start for t in tasks])
    computing = median_ms([t.computed - t.computing for t in tasks])
    after = median_ms([t.end - t.computed for t in tasks])
    return (
        f"per task, median ms: {before} call -> computing (parameter upload, admission and ledger reservation, "
        f"worker start, wrapper build) + {computing} computing (rows, noise) + {after} result (worker -> daemon, "
        f"ledger commit, result stream); round minus its slowest computing phase: {median_ms(series.overhead)}"
    )


# -- 2. the 1 GB stream ------------------------------------------------------------------------


class _TimedEvents:
    """The RunTask event stream, noting when each kind of event first arrived."""

    def __init__(self, call: Iterator[pb.TaskEvent], marks: dict[str, float]) -> None:
        self._call = call
        self._marks = marks

    def __iter__(self) -> Iterator[pb.TaskEvent]:
        for event in self._call:
            kind = event.WhichOneof("event") or "?"
            now = time.perf_counter()
            self._marks.setdefault(kind, now)
            if kind == "progress" and event.progress.fraction >= 1.0:
                self._marks["computed"] = now
            yield event


class _TimedStub:
    """Just enough of AgentStub for edge_sponsor.coordinator.tasks.run_task, with event times."""

    def __init__(self, stub: pb_grpc.AgentStub, marks: dict[str, float]) -> None:
        self._stub = stub
        self._marks = marks

    def RunTask(self, requests: Iterator[pb.RunTaskRequest], timeout: float | None = None) -> _TimedEvents:  # noqa: N802
        marks = self._marks

        def noted() -> Iterator[pb.RunTaskRequest]:
            yield from requests
            marks["uploaded"] = time.perf_counter()

        return _TimedEvents(self._stub.RunTask(noted(), timeout=timeout), marks)


def stream_coordinator(address: str, pki_dir: Path, digest: str, parameters: int, timeout: float) -> dict[str, Any]:
    """The coordinator side of the stream test, in its own process (``--stream-coordinator``)."""
    pki = DevelopmentPki(pki_dir)
    creds = credentials(pki)
    report: dict[str, Any] = {"baseline_kib": vm_kib("self", "VmRSS")}
    weights = np.full(matrix_shape(parameters), 1e-3, np.float32)
    channel = grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(creds.ca_cert, creds.key, creds.cert),
        options=channel_options(16 * 1024 * 1024, "localhost"),
    )
    marks: dict[str, float] = {}
    report["start"] = time.perf_counter()
    try:
        run = run_task(
            _TimedStub(pb_grpc.AgentStub(channel), marks),  # type: ignore[arg-type]
            task_spec(digest, f"stream-{os.getpid()}", 1, "stream"),
            [("W", weights)],
            timeout=timeout,
            expected=[TensorDecl("W", "float32", weights.shape)],
        )
        report["result_bytes"] = int(run.tensors["W"].nbytes)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        report["error"] = f"RunTask {code.name if code else 'failed'}: {details}"
    except TaskProtocolError as exc:
        report["error"] = f"RunTask protocol error: {exc}"
    report["end"] = time.perf_counter()
    report["marks"] = marks
    report["peak_kib"] = vm_kib("self", "VmHWM")
    channel.close()
    return report


class PeakWatch(Poller):
    """Polls the daemon's task workers (the forkserver's children) for VmHWM every 20 ms."""

    def __init__(self, daemon_pid: int) -> None:
        super().__init__(0.02)
        self.daemon_pid = daemon_pid
        self.worker_kib: int | None = None

    def sample(self) -> None:
        for pid, depth in descendants(self.daemon_pid).items():
            if depth == 2:  # daemon -> forkserver -> worker
                peak = vm_kib(pid, "VmHWM")
                if peak is not None and (self.worker_kib is None or peak > self.worker_kib):
                    self.worker_kib = peak


@dataclass
class StreamOutcome:
    line: str
    details: list[str]
    failed: bool


def stream_attempt(root: Path, pki: DevelopmentPki, publisher: AgentKey, parameters: int, timeout: float,
                   ) -> StreamOutcome:
    """One fresh agent daemon (its VmHWM is this attempt's) returns one ``parameters`` float32 result."""
    tensor = parameters * 4
    package = build_package(parameters, publisher)
    label = f"{size_label(parameters)} float32 ({tensor / 1e9:.2f} GB)"
    details = [f"package: W {list(package.shape)}, agent mode {package.mode}"
               + (f" ({package.fallback})" if package.fallback else "")]
    with running_agents([f"stream-{size_label(parameters)}"], root, pki, publisher, rows=4,
                        memory_mb=STREAM_MEMORY_MB, task_seconds=STREAM_TASK_SECONDS) as (agent,):
        try:
            with AgentClient(agent.address, credentials(pki), server_name="localhost", timeout=30) as client:
                client.wait_until_ready(30)
                digest = upload(client, package)
        except (AgentRpcError, BenchError) as exc:
            return StreamOutcome(f"stream {label}: FAILED, the agent refuses the package: {exc}", details, True)
        daemon_before = vm_kib(agent.process.pid, "VmRSS")
        command = [sys.executable, str(Path(__file__).resolve()), "--stream-coordinator", agent.address,
                   str(pki.directory), digest, str(parameters), str(timeout)]
        with PeakWatch(agent.process.pid) as watch:
            child = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 120, check=False)
        daemon_peak = vm_kib(agent.process.pid, "VmHWM")
        agent_log = agent.log.read_text(errors="replace").splitlines()
    try:
        report = json.loads(child.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        tail = " | ".join((child.stderr or child.stdout).strip().splitlines()[-5:])
        return StreamOutcome(f"stream {label}: the coordinator process failed (exit {child.returncode}): {tail}",
                             details, True)
    marks = report["marks"]
    peaks = (
        f"peak RSS: coordinator {gib(report['peak_kib'])} (at start {gib(report['baseline_kib'])}), "
        f"agent daemon {gib(daemon_peak)} (before the task {gib(daemon_before)}), "
        f"task worker {gib(watch.worker_kib)}; 3x the tensor = {gib(3 * tensor // 1024)}"
    )
    timeline = ", ".join(f"{k} +{v - report['start']:.1f}" for k, v in sorted(marks.items(), key=lambda kv: kv[1]))
    details.append(f"events, s after the call (coordinator clock): {timeline or 'none'}; "
                   f"end +{report['end'] - report['start']:.1f}")
    if "uploaded" in marks and "accepted" in marks:
        details.append(f"parameter upload {tensor / 1e6 / (marks['uploaded'] - marks['accepted']):.0f} MB/s "
                       "(accepted -> last chunk handed to gRPC)")
    if "error" in report:
        problems = [line for line in agent_log if '"warning"' in line or '"error"' in line]
        details += [f"agent log: {line[:400]}" for line in problems[-3:]]
        return StreamOutcome(f"stream {label}: FAILED: {report['error']}; {peaks}", details, True)
    seconds = marks["completed"] - marks["result_header"]
    return StreamOutcome(
        f"stream {label} agent -> coordinator: {report['result_bytes'] / 1e6:.0f} MB in {seconds:.2f} s = "
        f"{report['result_bytes'] / 1e6 / seconds:.0f} MB/s (result header -> completed); {peaks}",
        details,
        False,
    )


def stream_test(root: Path, pki: DevelopmentPki, publisher: AgentKey, sizes: Sequence[int], timeout: float,
                ) -> list[StreamOutcome]:
    """The requested size; if that fails, the next (smaller) one, so that MB/s and RSS are still measured."""
    outcomes: list[StreamOutcome] = []
    for parameters in sizes:
        outcomes.append(stream_attempt(root, pki, publisher, parameters, timeout))
        if not outcomes[-1].failed:
            break
    return outcomes


# -- 3. Flower ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_tcp(port: int, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: exited with {process.returncode}: {log.read_text()[-500:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{log.name}: nothing listens on port {port} after {timeout} s")


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group we started (the Flower process and the SuperExec it spawned)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class FlowerSeries:
    seconds: list[float] = field(default_factory=list)
    warmup: list[float] = field(default_factory=list)
    error: str = ""
    load: float = math.nan


def flower_runs(venv: Path, work: Path, sizes: Sequence[int], *, rounds: int, warmup: int, tuned: bool,
                log: Callable[[str], None]) -> dict[int, FlowerSeries]:
    """One SuperLink and three SuperNodes (insecure, loopback), one `flwr run` per size."""
    home = work / "flwr-home"
    home.mkdir(parents=True)
    link = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", FLWR_HOME=str(home),
               FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    env.pop("PYTHONPATH", None)
    if tuned:
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(FLOWER_POLL)
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, command: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        path = work / f"{name}.log"
        with path.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, cwd=work)
        started.append(process)
        return process, path

    results: dict[int, FlowerSeries] = {}
    try:
        superlink, superlink_log = start("superlink", [
            str(venv / "bin" / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link),
            "--disable-runtime-dependency-installation",
        ])
        wait_tcp(link, superlink, 60, superlink_log)
        for index in range(3):
            port = free_port()
            node, node_log = start(f"supernode{index}", [
                str(venv / "bin" / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                "--port", str(port), "--node-config", f"partition-id={index}",
            ])
            wait_tcp(port, node, 60, node_log)
        for parameters in sizes:
            out = work / f"rounds-{parameters}.json"
            config = (f"num-server-rounds={warmup + rounds} parameters={parameters} nodes=3 "
                      f"out='{out}' poll={FLOWER_POLL if tuned else 0.0} reply='echo'")
            command = [str(venv / "bin" / "flwr"), "run", str(ROOT / "bench" / "flower_round"), "bench",
                       "--run-config", config, "--stream"]
            begun = time.monotonic()
            series = FlowerSeries()
            with (work / f"flwr-run-{parameters}.log").open("wb") as run_log, LoadSampler() as load:
                try:
                    code = subprocess.run(command, stdout=run_log, stderr=subprocess.STDOUT, env=env, cwd=work,
                                          timeout=120 + (warmup + rounds) * 120, check=False).returncode
                except subprocess.TimeoutExpired:
                    code = -1
            measured = json.loads(out.read_text())["seconds"] if out.exists() else []
            series.warmup, series.seconds = measured[:warmup], measured[warmup:]
            series.load = load.mean
            if code != 0 or len(measured) != warmup + rounds:
                series.error = (f"flwr run exited {code} after {len(measured)} of {warmup + rounds} rounds "
                                f"(see {work / f'flwr-run-{parameters}.log'})")
            results[parameters] = series
            log(f"  Flower {'tuned' if tuned else 'default'} {size_label(parameters):>4}: {len(measured)} rounds "
                f"in {time.monotonic() - begun:.0f} s")
    finally:
        for process in reversed(started):
            stop_group(process)
    return results


# -- output ------------------------------------------------------------------------------------


def stats(values: Sequence[float]) -> tuple[float, float] | None:
    return (statistics.median(values), percentile(values, 0.9)) if values else None


def cell(pair: tuple[float, float] | None, digits: int = 2) -> str:
    return "-" if pair is None else f"{pair[0]:.{digits}f} / {pair[1]:.{digits}f}"


@dataclass
class Results:
    sizes: list[int]
    packages: dict[int, Package] = field(default_factory=dict)
    agent: dict[int, RoundSeries] = field(default_factory=dict)
    logs_name_fallback: list[str] = field(default_factory=list)
    flower: dict[str, dict[int, FlowerSeries]] = field(default_factory=dict)
    flower_note: str = ""
    floor: dict[int, FloorSeries] = field(default_factory=dict)  # raw grpcio with mTLS (grpc_floor.py)
    stream: list[StreamOutcome] = field(default_factory=list)


def edge_agent_part(args: argparse.Namespace, work: Path, pki: DevelopmentPki, publisher: AgentKey, *,
                    results: Results, log: Callable[[str], None]) -> None:
    packages = [build_package(p, publisher) for p in results.sizes]
    with running_agents(["site0", "site1", "site2"], work / "agents", pki, publisher, args.rows,
                        memory_mb=8192, task_seconds=3600) as agents:
        clients = [AgentClient(a.address, credentials(pki), server_name="localhost", timeout=30) for a in agents]
        try:
            for client in clients:
                client.wait_until_ready(30)
            for package in packages:
                label = size_label(package.parameters)
                results.packages[package.parameters] = package
                (digest,) = {upload(client, package) for client in clients}
                begun = time.monotonic()
                with LoadSampler() as load:
                    series = agent_rounds(
                        clients, digest, package, rounds=args.rounds, warmup=args.warmup, timeout=args.task_timeout
                    )
                series.load = load.mean
                results.agent[package.parameters] = series
                log(f"  edge-agent {label:>4} ({package.mode}): {time.monotonic() - begun:.0f} s")
        finally:
            for client in clients:
                client.close()
        # The worker logs a Scan fallback at INFO through the standard logging module.
        results.logs_name_fallback = [
            a.name for a in agents if "batching compiler refused" in a.log.read_text(errors="replace")
        ]


def flower_part(args: argparse.Namespace, work: Path, results: Results, log: Callable[[str], None]) -> None:
    if not (args.flower_venv / "bin" / "flwr").exists():
        results.flower_note = f"Flower: skipped, no {args.flower_venv}/bin/flwr (make bench creates it)"
        return
    rounds = args.rounds if args.flower_rounds is None else args.flower_rounds
    for tuned in (False, True):
        setting = "tuned" if tuned else "default"
        results.flower[setting] = flower_runs(
            args.flower_venv, work / f"flower-{setting}", results.sizes, rounds=rounds, warmup=args.warmup,
            tuned=tuned, log=log,
        )


def cpu_line(agent: RoundSeries, floor: FloorSeries | None) -> str:
    """CPU per round against the cores: a round that needs more CPU than the cores give
    in its wall time is CPU-bound, and no saving in waiting can make it shorter."""
    cores = os.cpu_count() or 1
    line = (f"CPU per timed round, every process (bench, agents, workers): {agent.cpu_per_round * 1000:.0f} ms, "
            f"so at least {agent.cpu_per_round * 1000 / cores:.0f} ms of wall time on {cores} cores")
    if floor is not None:
        line += f"; raw grpcio floor: {floor.cpu_per_round * 1000:.0f} ms"
    return line


def report(results: Results) -> None:
    print()
    for parameters, package in results.packages.items():
        a, b = package.shape
        how = "compiled batch" if package.mode == "batched" else f"Scan fallback: {package.fallback}"
        print(f"  {size_label(parameters):>4}: W [{a}, {b}]; the agent runs it as {how}")
    if results.packages:
        names = ", ".join(results.logs_name_fallback) or "none of them"
        print(f"  (agent logs that say so: {names})")
    settings = list(results.flower)
    header = f"{'model':>6} | {'edge-agent s/round median / p90':>31}"
    if results.floor:
        header += f" | {'raw grpcio mTLS floor':>21} | {'above':>6}"
    for setting in settings:
        header += f" | {'Flower ' + setting + ' median / p90':>28} | {'ratio':>6}"
    print("\n" + header + "\n" + "-" * len(header))
    for parameters in results.sizes:
        series = results.agent.get(parameters)
        ours = stats(series.seconds) if series is not None else None
        row = f"{size_label(parameters):>6} | {cell(ours, 3):>31}"
        if results.floor:
            floor = stats(results.floor[parameters].seconds) if parameters in results.floor else None
            above = f"{ours[0] / floor[0]:.1f}x" if floor and ours else "-"
            row += f" | {cell(floor, 3):>21} | {above:>6}"
        for setting in settings:
            theirs = stats(results.flower[setting][parameters].seconds)
            ratio = f"{theirs[0] / ours[0]:.1f}x" if theirs and ours else "-"
            row += f" | {cell(theirs):>28} | {ratio:>6}"
        print(row)
    print("ratio = Flower median / edge-agent median; median and p90 over the timed rounds")
    if results.floor:
        print("raw grpcio mTLS floor: bench/grpc_floor.py in this run, 3 echo servers, the same bytes each way in "
              "1 MiB messages, nothing hashed, stored or computed; above = edge-agent median / floor median")
    for parameters, agent in results.agent.items():
        warm = ", ".join(f"{s:.2f}" for s in agent.warmup)
        failed = f"; FAILED {agent.error}" if agent.error else ""
        print(f"  edge-agent {size_label(parameters):>4}: {len(agent.seconds)} timed rounds, warm-up {warm} s; "
              f"load average {agent.load:.1f}; ε spent per site so far {agent.epsilon:.2f}{failed}")
        print(f"    {phase_line(agent)}")
        print(f"    {cpu_line(agent, results.floor.get(parameters))}")
    for setting in settings:
        for parameters, flower in results.flower[setting].items():
            warm = ", ".join(f"{s:.2f}" for s in flower.warmup)
            note = f"; {flower.error}" if flower.error else ""
            print(f"  Flower {setting:<7} {size_label(parameters):>4}: {len(flower.seconds)} timed rounds, "
                  f"warm-up {warm} s; load average {flower.load:.1f}{note}")
    if settings:
        print("  Flower 1.42.0 deployment engine: SuperLink + 3 SuperNodes in INSECURE mode (no TLS) on loopback; "
              f"'tuned' = FLWR_SUPEREXEC_TASK_POLL_INTERVAL={FLOWER_POLL} (default 1 s) and the ServerApp pulling "
              f"replies every {FLOWER_POLL} s (send_and_receive sleeps 3 s); the SuperNode's 3 s idle poll has no knob")
    if results.flower_note:
        print("  " + results.flower_note)
    print("  " + REFERENCE)
    for outcome in results.stream:
        print("\n" + outcome.line)
        for line in outcome.details:
            print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10k", "1M", "25M"], help="float32 parameters per model")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (reported apart)")
    parser.add_argument("--flower-rounds", type=int, default=None, help="timed Flower rounds (default: --rounds)")
    parser.add_argument("--rows", type=int, default=24, help="rows of each agent's dataset")
    parser.add_argument("--skip-agent", action="store_true", help="no edge-agent rounds")
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--skip-floor", action="store_true", help="no raw grpcio rounds (bench/grpc_floor.py)")
    parser.add_argument("--stream-sizes", nargs="+", default=["250M", "50M"],
                        help="float32 parameters of the streamed result; the next is tried if one fails")
    parser.add_argument("--task-timeout", type=float, default=600.0, help="gRPC deadline of one task, seconds")
    parser.add_argument("--flower-venv", type=Path, default=ROOT / ".venv-flower")
    parser.add_argument("--workdir", type=Path, help="keep configs and logs here (a new directory)")
    parser.add_argument("--stream-coordinator", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_coordinator:
        address, pki_dir, digest, parameters, timeout = args.stream_coordinator
        print(json.dumps(stream_coordinator(address, Path(pki_dir), digest, int(parameters), float(timeout))))
        return

    began = time.monotonic()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    print(f"round latency, 3 sites on loopback; load average at start {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs, shared with whatever else runs)")
    print(f"edge-agent: mutual TLS, one dp_gradient task per site per round, C={CLIP} σ={SIGMA} q={Q}, "
          f"{args.rows} rows per site, ε budget {EPSILON_BUDGET:g} per site at δ={DELTA:g} (PLD); "
          f"{args.warmup} warm-up + {args.rounds} timed rounds per size")
    results = Results([parse_size(s) for s in args.sizes])
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True)
            work = args.workdir.resolve()
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-agent-round-latency-")))
        pki, _ = ensure_development_pki(work / "pki")
        publisher = generate_key_file(work / "publisher.key")
        if not args.skip_agent:
            edge_agent_part(args, work, pki, publisher, results=results, log=log)
        if not args.skip_floor:
            log("  raw grpcio floor ...")
            results.floor = floor_rounds(pki, results.sizes, args.rounds, args.warmup)
        if not args.skip_stream:
            log("  stream test ...")
            results.stream = stream_test(work / "stream", pki, publisher,
                                         [parse_size(s) for s in args.stream_sizes], args.task_timeout)
        if not args.skip_flower:
            flower_part(args, work, results, log)
    report(results)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}; the whole run took {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
