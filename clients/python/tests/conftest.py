"""A live batch-history server on a scratch database, for the client tests.

The client package must be installed (`pip install clients/python`).
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def scratch_database(prefix="bh_py"):
    """A database of its own on the test server, dropped afterwards; yields its URL."""
    database = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _psql(ADMIN_URL, f"CREATE DATABASE {database}")
    try:
        yield urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + database))
    finally:
        _psql(ADMIN_URL, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@contextlib.contextmanager
def run_server(database_url, addr=None, extra_env=None, healthcheck_args=()):
    """The server on `database_url`, listening on `addr` (a free loopback
    port by default), until the block ends; yields its address."""
    addr = addr or f"127.0.0.1:{free_port()}"
    env = dict(os.environ, DATABASE_URL=database_url, LISTEN_ADDR=addr, LOG_FORMAT="pretty",
               **(extra_env or {}))
    server = subprocess.Popen([BINARY, "serve"], env=env)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([BINARY, "healthcheck", "--addr", addr, *healthcheck_args],
                             capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the server did not start")
            time.sleep(0.1)
        yield addr
    finally:
        server.terminate()
        server.wait(timeout=15)


@contextlib.contextmanager
def serve(extra_env=None, healthcheck_args=()):
    """A server on a scratch database; yields its address and database."""
    with scratch_database() as url, run_server(url, None, extra_env, healthcheck_args) as addr:
        yield Server(addr, url)


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
