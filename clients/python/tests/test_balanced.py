"""Three replicas of the service on one database behind a real HAProxy,
configured as deploy/haproxy/haproxy.cfg ships (only its listen address and
server lines are replaced): calls spread across the replicas, a watcher
connected through the balancer sees changes written through any replica, and
a replica killed mid-load costs only the calls it had in flight.

Needs `haproxy` (Debian's 2.6; .ci/run installs it).
"""
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit
from urllib.request import urlopen

import grpc
import pytest

from batchhistory.v1 import batch_history_pb2 as pb
from batchhistory.v1 import batch_history_pb2_grpc as pb_grpc

from conftest import BINARY, REPO, free_port, _psql

REPLICAS = 3


@contextlib.contextmanager
def replicas(count):
    """`count` servers on one scratch database; yields (addr, metrics addr, process)."""
    admin_url = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    database = f"bh_py_{uuid.uuid4().hex[:12]}"
    _psql(admin_url, f"CREATE DATABASE {database}")
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + database))
    running = []
    try:
        for _ in range(count):
            addr, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            env = dict(os.environ, DATABASE_URL=url, LISTEN_ADDR=addr, METRICS_ADDR=metrics,
                       LOG_FORMAT="json", RUST_LOG="warn")
            running.append((addr, metrics, subprocess.Popen([BINARY, "serve"], env=env)))
        for addr, _, process in running:
            deadline = time.monotonic() + 30
            while subprocess.run([BINARY, "healthcheck", "--addr", addr],
                                 capture_output=True).returncode != 0:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"replica {addr} did not start")
                time.sleep(0.2)
        yield running
    finally:
        for _, _, process in running:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=15)
        _psql(admin_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@contextlib.contextmanager
def haproxy(backends):
    """The shipped configuration, listening on a free port, over `backends`."""
    config = (REPO / "deploy/haproxy/haproxy.cfg").read_text()
    port = free_port()
    config = config.replace("bind :50051 proto h2", f"bind 127.0.0.1:{port} proto h2")
    servers = "\n".join(f"    server replica{n} {addr}" for n, addr in enumerate(backends))
    config, replaced = re.subn(r"^\s*server-template .*$", servers, config, flags=re.M)
    assert replaced == 1, "the shipped configuration has no server-template line"
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as file:
        file.write(config)
        file.flush()
        process = subprocess.Popen(["haproxy", "-db", "-f", file.name],
                                   stdout=subprocess.DEVNULL)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=10)
            yield channel
        finally:
            process.terminate()
            process.wait(timeout=10)


def create(stub, batch_id):
    return stub.CreateBatch(pb.CreateBatchRequest(
        batch_id=batch_id,
        batch=pb.Batch(provider="groq", model="llama-3.3-70b", target_count=10)), timeout=5)


def calls_served(metrics_addr, method):
    page = urlopen(f"http://{metrics_addr}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith("batch_history_requests_total{")
               and f'method="{method}"' in line)


def test_three_replicas_behind_haproxy():
    with replicas(REPLICAS) as running, haproxy([addr for addr, _, _ in running]) as channel:
        stub = pb_grpc.BatchHistoryStub(channel)

        # One client connection; each call is balanced on its own.
        for n in range(60):
            create(stub, f"spread-{n}")
        served = [calls_served(metrics, "CreateBatch") for _, metrics, _ in running]
        assert sum(served) == 60 and all(count >= 10 for count in served), served

        # A watcher through the balancer sees what every replica writes.
        watch = stub.WatchBatches(pb.WatchBatchesRequest(provider="watched"), timeout=60)
        seen = set()

        def read():
            try:
                for event in watch:
                    if event.kind == pb.BatchEvent.CREATED:
                        seen.add(event.batch.batch_id)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.CANCELLED, error

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wanted = {f"watched-{n}" for n in range(30)}
        # The stream is open once the server has answered its headers.
        watch.initial_metadata()
        for batch_id in sorted(wanted):
            stub.CreateBatch(pb.CreateBatchRequest(
                batch_id=batch_id,
                batch=pb.Batch(provider="watched", model="m", target_count=1)), timeout=5)
        writers = [calls_served(metrics, "CreateBatch") for _, metrics, _ in running]
        assert all(after > before for after, before in zip(writers, served)), \
            "the watched creates went through every replica"
        deadline = time.monotonic() + 10
        while seen != wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        watch.cancel()
        assert seen == wanted, f"missed {sorted(wanted - seen)}"

        # A replica killed under load: only its in-flight calls fail.
        stop, outcomes, lock = threading.Event(), {"ok": 0, "failed": []}, threading.Lock()

        def load(worker):
            n = 0
            while not stop.is_set():
                try:
                    create(stub, f"load-{worker}-{n}")
                    with lock:
                        outcomes["ok"] += 1
                except grpc.RpcError as error:
                    with lock:
                        outcomes["failed"].append(error.code())
                n += 1

        workers = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for worker in workers:
            worker.start()
        time.sleep(1)
        running[0][2].send_signal(signal.SIGKILL)
        killed_at = outcomes["ok"]
        time.sleep(2)
        stop.set()
        for worker in workers:
            worker.join()
        print(f"killed one replica of {REPLICAS} under 8 workers: {outcomes['ok']} calls "
              f"answered ({outcomes['ok'] - killed_at} after the kill), "
              f"{len(outcomes['failed'])} failed {outcomes['failed']}")
        assert len(outcomes["failed"]) <= 8, "more failures than calls in flight"
        assert outcomes["ok"] - killed_at > 100, "the other replicas kept serving"
