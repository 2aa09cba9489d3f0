#!/usr/bin/env python3
"""What exporting spans over OTLP costs per call: the server's CPU time per
call (utime + stime from /proc) and its throughput, exporter off and on,
in alternating rounds on one seeded database, with a real OTLP collector
(opentelemetry-proto) taking the spans.

Usage: bench/otlp_cost.py   (from the repository root, with the Python
client's requirements installed: .ci/venv/bin/python bench/otlp_cost.py)
Environment: ROUNDS (3), SECONDS_PER_OP (5), CLIENTS (16), ROWS (10000),
PGHOST/PGPORT/PGUSER as for psql (default 127.0.0.1, 5432, postgres),
BATCH_HISTORY_BIN (the release build).
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

import harness
from harness import cpu

BIN = os.environ.get("BATCH_HISTORY_BIN", harness.BIN)
LOADGEN = harness.LOADGEN
ROUNDS = int(os.environ.get("ROUNDS", 3))
SECONDS = os.environ.get("SECONDS_PER_OP", "5")
CLIENTS = os.environ.get("CLIENTS", "16")
ROWS = os.environ.get("ROWS", "10000")
OPS = ["get", "create"]
PG = {"PGHOST": os.environ.get("PGHOST", "127.0.0.1"), "PGPORT": os.environ.get("PGPORT", "5432"),
      "PGUSER": os.environ.get("PGUSER", "postgres")}
DB = "bh_otlp_cost"


class Collector(otlp_grpc.TraceServiceServicer):
    spans = 0

    def Export(self, request, context):
        Collector.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return otlp.ExportTraceServiceResponse()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(*args):
    subprocess.run(["psql", "-qd", "postgres", *args], env=dict(os.environ, **PG), check=True,
                   stdout=subprocess.DEVNULL)


def measure(env, op, port):
    """One op against a fresh server with `env`: (calls/s, server µs CPU per call)."""
    server = subprocess.Popen([BIN, "serve"], env=env)
    try:
        while subprocess.run([BIN, "healthcheck", "--addr", f"127.0.0.1:{port}"],
                             capture_output=True).returncode:
            time.sleep(0.1)
        before = cpu(server.pid)[0]
        out = subprocess.run([LOADGEN, "--addr", f"http://127.0.0.1:{port}", "--clients", CLIENTS,
                              "--seconds", SECONDS, "--seeded", ROWS, "--ops", op, "--json"],
                             capture_output=True, text=True, check=True).stdout
        used = cpu(server.pid)[0] - before
        result = json.loads(out.splitlines()[-1])
        calls = result["ops"]
        return calls / result["seconds"], used / calls * 1e6
    finally:
        server.terminate()
        server.wait()


def main():
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "batch-history",
                    "--example", "loadgen"], check=True)
    collector = futures.ThreadPoolExecutor(max_workers=4)
    server = grpc.server(collector)
    otlp_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    collector_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    psql("-c", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", "-c", f"CREATE DATABASE {DB}")
    port = free_port()
    base = dict(os.environ, DATABASE_URL=f"postgres://{PG['PGUSER']}@{PG['PGHOST']}:{PG['PGPORT']}/{DB}",
                LISTEN_ADDR=f"127.0.0.1:{port}", LOG_FORMAT="json", RUST_LOG="warn", STALE_AFTER="0")
    try:
        subprocess.run([BIN, "migrate"], env=base, check=True, capture_output=True)
        subprocess.run(["psql", "-qd", DB, "-v", f"rows={ROWS}", "-f", "bench/seed.sql"],
                       env=dict(os.environ, **PG), check=True, stdout=subprocess.DEVNULL)
        modes = {"off": base,
                 "on": dict(base, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector_port}")}
        results = {(mode, op): [] for mode in modes for op in OPS}
        for round_ in range(ROUNDS):
            order = list(modes) if round_ % 2 == 0 else list(reversed(modes))
            for op in OPS:
                for mode in order:
                    results[mode, op].append(measure(modes[mode], op, port))
        print(f"{ROWS} rows, {CLIENTS} clients, {ROUNDS} alternating rounds of {SECONDS} s; "
              f"medians (min-max); {Collector.spans} spans collected")
        print(f"{'op':8} {'exporter':9} {'calls/s':>22} {'server CPU µs/call':>26}")
        for op in OPS:
            for mode in modes:
                rates = [r for r, _ in results[mode, op]]
                cpus = [c for _, c in results[mode, op]]
                print(f"{op:8} {mode:9} {statistics.median(rates):9.0f} "
                      f"({min(rates):.0f}-{max(rates):.0f}) {statistics.median(cpus):11.1f} "
                      f"({min(cpus):.1f}-{max(cpus):.1f})")
    finally:
        server.stop(None)
        psql("-c", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


if __name__ == "__main__":
    sys.exit(main())
