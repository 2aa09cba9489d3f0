"""A live batch-history server on a scratch database, for the client tests.

The client package must be installed (`pip install examples/python`).
BATCH_HISTORY_BIN: the server binary (default: the repository's release build).
TEST_DATABASE_URL: a PostgreSQL server where a scratch database may be created.
"""
import contextlib
import dataclasses
import os
import pathlib
import socket
import subprocess
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
BINARY = os.environ.get("BATCH_HISTORY_BIN", str(REPO / "target/release/batch-history"))


@dataclasses.dataclass
class Server:
    addr: str
    database_url: str


def _psql(admin_url, sql):
    subprocess.run(["psql", admin_url, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(extra_env=None, healthcheck_args=()):
    """A server on a scratch database; yields its address and database."""
    binary = BINARY
    admin_url = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    database = f"bh_py_{uuid.uuid4().hex[:12]}"
    _psql(admin_url, f"CREATE DATABASE {database}")
    url = urlsplit(admin_url)
    env = dict(os.environ, DATABASE_URL=urlunsplit(url._replace(path="/" + database)),
               LISTEN_ADDR=f"127.0.0.1:{_free_port()}", LOG_FORMAT="pretty", **(extra_env or {}))
    addr = env["LISTEN_ADDR"]
    server = subprocess.Popen([binary, "serve"], env=env)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([binary, "healthcheck", "--addr", addr, *healthcheck_args],
                             capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the server did not start")
            time.sleep(0.2)
        yield Server(addr, env["DATABASE_URL"])
    finally:
        server.terminate()
        server.wait(timeout=15)
        _psql(admin_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@pytest.fixture(scope="session")
def server():
    with serve() as running:
        yield running


@pytest.fixture(scope="session")
def server_addr(server):
    return server.addr


@pytest.fixture
def history(server_addr):
    from batch_history_client import BatchHistory
    client = BatchHistory(server_addr, timezone="UTC")
    yield client
    client.close()
