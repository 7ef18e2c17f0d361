"""The transport floor of a round: raw grpcio with mutual TLS, no agent at all.

    .venv/bin/python bench/grpc_floor.py [--sizes 1e4 1e6 25e6] [--rounds 20] [--insecure]

Three echo servers as processes on loopback (the development PKI's agent
certificate, client certificates required), one client process dialing all three
with the coordinator's certificate and the product's channel options. A round:
each server is sent ``4 * P`` bytes in 1 MiB messages of one bidirectional stream
and streams as many back, all three at once, as a federated round moves float32
parameters out and gradients back. Nothing is hashed, parsed, stored or computed,
so the median is what gRPC and TLS alone cost on this machine, beside whatever else
runs on it. bench/round_latency.py runs it in the same process for its table.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from process_tree import tree_cpu_seconds  # noqa: E402

from agent.identity.development_pki import DevelopmentPki, ensure_development_pki  # noqa: E402
from edge_sponsor.coordinator.client import ClientCredentials, channel_options  # noqa: E402

CHUNK = 1 << 20
METHOD = "/bench.Echo/Stream"


@dataclass
class FloorSeries:
    seconds: list[float] = field(default_factory=list)  # timed rounds
    cpu_per_round: float = 0.0  # CPU seconds of the client and the three servers per timed round


def _same(data: bytes) -> bytes:
    return data


def serve(pki_dir: Path, *, insecure: bool) -> None:
    """An echo server: prints its port, then answers each stream with as many bytes as it got."""
    pki = DevelopmentPki(pki_dir)
    reply = bytes(CHUNK)

    def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        received = sum(len(message) for message in requests)
        for start in range(0, received, CHUNK):
            yield reply[: min(CHUNK, received - start)]

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Stream": grpc.stream_stream_rpc_method_handler(echo, request_deserializer=_same, response_serializer=_same)},
    )
    options = [("grpc.max_receive_message_length", 4 * CHUNK), ("grpc.max_send_message_length", 4 * CHUNK)]
    server = grpc.server(futures.ThreadPoolExecutor(4), options=options)
    server.add_generic_rpc_handlers((handler,))
    if insecure:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials(
            [(pki.agent_key.read_bytes(), pki.agent_cert.read_bytes())],
            root_certificates=pki.ca_cert.read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def floor_rounds(
    pki: DevelopmentPki, sizes: Sequence[int], rounds: int, warmup: int, *, insecure: bool = False
) -> dict[int, FloorSeries]:
    """Seconds per timed round and CPU per round for each size (float32 parameters).

    ``insecure``: plaintext HTTP/2 instead of mutual TLS, to compare with figures
    measured that way (the agent itself never serves without TLS).
    """
    command = [sys.executable, __file__, "--serve", str(pki.directory), *(["--insecure"] if insecure else [])]
    servers = [subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True) for _ in range(3)]
    try:
        ports = []
        for server in servers:
            # An echo server that hangs before printing its port must not hang the bench.
            ready, _, _ = select.select([server.stdout], [], [], 60) if server.stdout else ([], [], [])
            line = server.stdout.readline() if ready and server.stdout else b""
            if not line.strip():
                raise RuntimeError("an echo server did not start within 60 s")
            ports.append(int(line))
        client = ClientCredentials.from_files(pki.ca_cert, pki.coordinator_cert, pki.coordinator_key)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=client.ca_cert, private_key=client.key, certificate_chain=client.cert
        )
        # The coordinator's own options (AgentClient's default message limit, keepalive).
        options = channel_options(16 * 1024 * 1024, "localhost")
        channels = [
            grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
            if insecure
            else grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)
            for port in ports
        ]
        try:
            return _timed_rounds(channels, sizes, rounds, warmup)
        finally:
            for channel in channels:
                channel.close()
    finally:
        for server in servers:
            server.kill()
            server.wait()


def _timed_rounds(
    channels: Sequence[grpc.Channel], sizes: Sequence[int], rounds: int, warmup: int
) -> dict[int, FloorSeries]:
    calls = [
        channel.stream_stream(METHOD, request_serializer=_same, response_deserializer=_same) for channel in channels
    ]
    results: dict[int, FloorSeries] = {}
    with futures.ThreadPoolExecutor(len(calls)) as pool:
        for parameters in sizes:
            payload = bytes(4 * parameters)
            pieces = [payload[start : start + CHUNK] for start in range(0, len(payload), CHUNK)]

            def one(call: grpc.StreamStreamMultiCallable[bytes, bytes], pieces: list[bytes] = pieces) -> int:
                return sum(len(reply) for reply in call(iter(pieces), timeout=600))

            series = FloorSeries()
            cpu_start = 0.0
            for number in range(warmup + rounds):
                if number == warmup:
                    cpu_start = tree_cpu_seconds(os.getpid())
                started = time.perf_counter()
                echoed = list(pool.map(one, calls))
                if echoed != [len(payload)] * len(calls):
                    raise RuntimeError(f"echo returned {echoed} bytes, sent {len(payload)}")
                if number >= warmup:
                    series.seconds.append(time.perf_counter() - started)
            series.cpu_per_round = (tree_cpu_seconds(os.getpid()) - cpu_start) / rounds
            results[parameters] = series
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e6, 25e6], help="float32 parameters")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pki", type=Path, help="a development PKI directory (default: a new one)")
    parser.add_argument("--insecure", action="store_true", help="plaintext HTTP/2 instead of mutual TLS")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, insecure=args.insecure)
        return
    with tempfile.TemporaryDirectory() as scratch:
        pki, _ = ensure_development_pki(args.pki or Path(scratch) / "pki")
        sizes = [int(size) for size in args.sizes]
        for parameters, series in floor_rounds(pki, sizes, args.rounds, args.warmup, insecure=args.insecure).items():
            ordered = sorted(series.seconds)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
            median = statistics.median(series.seconds)
            print(
                f"{parameters:>10} float32: median {median * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
                f"CPU {series.cpu_per_round * 1000:.0f} ms per round (all four processes)"
            )


if __name__ == "__main__":
    main()
