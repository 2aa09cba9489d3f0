#!/usr/bin/env python3
"""Checks docker-compose.yml without a Docker engine.

1. docker-compose (a real compose parser) accepts the file with .env.example,
   and refuses it when POSTGRES_PASSWORD is unset.
2. Runs the release binary the way compose would run the batch-history
   service: the environment compose resolves from .env.example (database host
   pointed at the local PostgreSQL), the image's entrypoint with the service's
   command, and the service's healthcheck command exactly as written. The
   healthcheck must fail before the service is up and pass once it serves;
   SIGTERM must stop it cleanly.

Usage: run_as_compose.py PATH/TO/release/dir   (run from the repository root)
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

import yaml  # python3-yaml, installed with Debian's docker-compose

SERVICE = "batch-history"
LOCAL_DB_HOST = os.environ.get("COMPOSE_TEST_DB_HOST", "127.0.0.1")


def compose_config(env_file):
    return subprocess.run(
        ["docker-compose", "--env-file", env_file, "config"],
        capture_output=True, text=True)


def psql(sql, database="postgres"):
    subprocess.run(["psql", "-h", LOCAL_DB_HOST, "-U", "postgres", "-d", database,
                    "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True)


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    release_dir = os.path.abspath(sys.argv[1])
    binary = os.path.join(release_dir, SERVICE)
    if not os.access(binary, os.X_OK):
        fail(f"{binary} is not built; run cargo build --release first")

    resolved = compose_config(".env.example")
    if resolved.returncode != 0:
        fail(f"docker-compose config rejects the file:\n{resolved.stderr}")
    with tempfile.NamedTemporaryFile("w", suffix=".env") as empty:
        env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
        refused = subprocess.run(["docker-compose", "--env-file", empty.name, "config", "-q"],
                                 capture_output=True, text=True, env=env)
    if refused.returncode == 0 or "POSTGRES_PASSWORD" not in refused.stderr:
        fail(f"compose must refuse to start without POSTGRES_PASSWORD:\n{refused.stderr}")
    print("ok: docker-compose config accepts the file, and refuses it without POSTGRES_PASSWORD")

    config = yaml.safe_load(resolved.stdout)
    service = config["services"][SERVICE]
    environment = {k: str(v) for k, v in service["environment"].items()}
    url = urlsplit(environment["DATABASE_URL"])
    if url.hostname != "postgres":
        fail(f"DATABASE_URL should point at the postgres service, not {url.hostname}")
    database = url.path.lstrip("/")
    # The compose network's "postgres" is the local server here.
    netloc = f"{url.username}:{url.password}@{LOCAL_DB_HOST}:{url.port or 5432}"
    environment["DATABASE_URL"] = urlunsplit(url._replace(netloc=netloc))
    environment["PATH"] = release_dir + os.pathsep + os.environ["PATH"]

    healthcheck = service["healthcheck"]["test"]
    if healthcheck[0] != "CMD":
        fail(f"the healthcheck must be exec form (the image has no shell): {healthcheck}")
    healthcheck = healthcheck[1:]
    command = [SERVICE] + service["command"]  # the Dockerfile's ENTRYPOINT is the binary

    psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    psql(f"DROP ROLE IF EXISTS {url.username}")
    psql(f"CREATE ROLE {url.username} LOGIN PASSWORD '{url.password}'")
    psql(f"CREATE DATABASE {database} OWNER {url.username}")
    server = None
    try:
        before = subprocess.run(healthcheck, env=environment, capture_output=True)
        if before.returncode == 0:
            fail("the healthcheck passed before the service started")
        print("ok: the healthcheck fails while the service is down")

        server = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            check = subprocess.run(healthcheck, env=environment, capture_output=True)
            if check.returncode == 0:
                break
            if server.poll() is not None:
                fail(f"the service exited with {server.returncode}:\n{server.stderr.read()}")
            if time.monotonic() > deadline:
                fail(f"the healthcheck never passed: {check.stderr.decode()}")
            time.sleep(0.5)
        print("ok: the healthcheck passes once the service serves")

        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            fail("the service did not stop within 15 s of SIGTERM")
        logs = server.stderr.read()
        if code != 0:
            fail(f"the service exited with {code} after SIGTERM:\n{logs}")
        if url.password in logs:
            fail("the database password appears in the service's logs")
        after = subprocess.run(healthcheck, env=environment, capture_output=True)
        if after.returncode == 0:
            fail("the healthcheck passed after the service stopped")
        print("ok: SIGTERM stops the service with exit 0; its logs hold no password")
    finally:
        if server and server.poll() is None:
            server.kill()
        psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        psql(f"DROP ROLE IF EXISTS {url.username}")


if __name__ == "__main__":
    main()
