#!/usr/bin/env python3
"""Checks docker-compose.yml without a Docker engine.

1. docker-compose (a real compose parser) refuses the file with .env.example
   as shipped (it holds no password) or with no POSTGRES_PASSWORD at all, and
   accepts it once one is set: every port then published on loopback only,
   PostgreSQL checked over TCP, the balancer profile on the shipped HAProxy
   configuration.
2. Runs the release binary the way compose would run the batch-history
   service: the environment compose resolves from an .env (database host
   pointed at the local PostgreSQL), the image's entrypoint with the service's
   command, and the service's healthcheck command exactly as written. The
   healthcheck must fail before the service is up and pass once it serves;
   SIGTERM must stop it cleanly, with no password in its logs. Twice:
   - .env.example with a password no URL could hold as is: the bundled
     database, reached through the PG* variables;
   - .env.example plus a DATABASE_URL: that database, not the bundled one.

Usage: run_as_compose.py PATH/TO/release/dir   (run from the repository root)
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

import yaml  # python3-yaml, installed with Debian's docker-compose

SERVICE = "batch-history"
LOCAL_DB_HOST = os.environ.get("COMPOSE_TEST_DB_HOST", "127.0.0.1")
PASSWORD = "p@ss:w/rd#1?"
EXTERNAL = f"postgres://bh_external:ext-pw@{LOCAL_DB_HOST}:5432/bh_external_db"


def compose_config(env_file, *options):
    return subprocess.run(
        ["docker-compose", "--env-file", env_file, *options, "config"],
        capture_output=True, text=True)


def psql(sql, database="postgres"):
    subprocess.run(["psql", "-h", LOCAL_DB_HOST, "-U", "postgres", "-d", database,
                    "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True)


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def resolved_service(extra_lines, full=False):
    """The service (or with `full` the whole file, every profile) as compose
    resolves it from .env.example plus `extra_lines`."""
    with open(".env.example") as example, tempfile.NamedTemporaryFile("w", suffix=".env") as env:
        env.write(example.read() + "\n" + "\n".join(extra_lines) + "\n")
        env.flush()
        resolved = compose_config(env.name, "--profile", "balanced", "--profile", "import")
    if resolved.returncode != 0:
        fail(f"docker-compose config rejects the file:\n{resolved.stderr}")
    services = yaml.safe_load(resolved.stdout)["services"]
    return services if full else services[SERVICE]


def check_published(services):
    """Nothing is published beyond loopback by default, and the balancer runs
    the shipped HAProxy configuration."""
    for name, service in services.items():
        for port in service.get("ports", []):
            # Long syntax (compose v2) or "HOST_IP:HOST_PORT:PORT" (1.29).
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            if host_ip != "127.0.0.1":
                fail(f"{name} publishes {port} beyond loopback by default")
    postgres = services["postgres"]["healthcheck"]["test"]
    if "-h" not in postgres:
        fail(f"the postgres healthcheck must check over TCP, not the socket: {postgres}")
    mounts = [volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
              for volume in services["balancer"]["volumes"]]
    if not any(source.endswith("deploy/haproxy/haproxy.cfg") for source in mounts):
        fail(f"the balancer does not mount deploy/haproxy/haproxy.cfg: {mounts}")
    mount = services["import"]["volumes"][0]
    if not isinstance(mount, dict) or mount.get("type") != "bind" or not mount.get("read_only"):
        fail(f"the import must mount its directory read-only in long syntax (a missing "
             f"path is then refused, not created as a directory): {mount}")
    print("ok: published on loopback only, postgres checked over TCP, the balancer configured, "
          "the legacy directory mounted read-only")


def run_like_compose(service, environment, secret):
    """The service's command and healthcheck, as compose would run them."""
    healthcheck = service["healthcheck"]["test"]
    if healthcheck[0] != "CMD":
        fail(f"the healthcheck must be exec form (the image has no shell): {healthcheck}")
    healthcheck = healthcheck[1:]
    command = [SERVICE] + service["command"]  # the Dockerfile's ENTRYPOINT is the binary
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
        if secret in logs:
            fail("the database password appears in the service's logs")
        after = subprocess.run(healthcheck, env=environment, capture_output=True)
        if after.returncode == 0:
            fail("the healthcheck passed after the service stopped")
        print("ok: SIGTERM stops the service with exit 0; its logs hold no password")
    finally:
        if server and server.poll() is None:
            server.kill()


def with_role(user, password, database, check):
    psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    psql(f"DROP ROLE IF EXISTS {user}")
    psql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    psql(f"CREATE DATABASE {database} OWNER {user}")
    try:
        check()
    finally:
        psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        psql(f"DROP ROLE IF EXISTS {user}")


def main():
    release_dir = os.path.abspath(sys.argv[1])
    binary = os.path.join(release_dir, SERVICE)
    if not os.access(binary, os.X_OK):
        fail(f"{binary} is not built; run cargo build --release first")
    shipped = compose_config(".env.example")
    if shipped.returncode == 0 or "POSTGRES_PASSWORD" not in shipped.stderr:
        fail(f"compose must refuse .env.example as shipped (no password):\n{shipped.stderr}")
    check_published(resolved_service([f"POSTGRES_PASSWORD={PASSWORD}"], full=True))
    with tempfile.NamedTemporaryFile("w", suffix=".env") as empty:
        env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
        refused = subprocess.run(["docker-compose", "--env-file", empty.name, "config", "-q"],
                                 capture_output=True, text=True, env=env)
    if refused.returncode == 0 or "POSTGRES_PASSWORD" not in refused.stderr:
        fail(f"compose must refuse to start without POSTGRES_PASSWORD:\n{refused.stderr}")
    print("ok: docker-compose config refuses the file without POSTGRES_PASSWORD (as shipped)")
    base = {"PATH": release_dir + os.pathsep + os.environ["PATH"]}

    # The bundled database, through the PG* variables.
    service = resolved_service([f"POSTGRES_PASSWORD={PASSWORD}"])
    environment = {k: str(v) for k, v in service["environment"].items()}
    if environment["DATABASE_URL"] or environment["PGHOST"] != "postgres":
        fail(f"without DATABASE_URL the service should use the postgres service: {environment}")
    if environment["PGPASSWORD"] != PASSWORD:
        fail("the password should reach the service as written, with no escaping")
    environment.update(base, PGHOST=LOCAL_DB_HOST)  # the compose network's "postgres"
    with_role(environment["PGUSER"], PASSWORD, environment["PGDATABASE"],
              lambda: run_like_compose(service, environment, PASSWORD))
    print("ok: without DATABASE_URL the service uses the bundled database")

    # DATABASE_URL in .env overrides it.
    service = resolved_service([f"POSTGRES_PASSWORD={PASSWORD}", f"DATABASE_URL={EXTERNAL}"])
    environment = {k: str(v) for k, v in service["environment"].items()}
    if environment["DATABASE_URL"] != EXTERNAL:
        fail(f"DATABASE_URL from .env should reach the service: {environment}")
    environment.update(base)  # PGHOST stays "postgres", which resolves to nothing here
    url = urlsplit(EXTERNAL)

    def migrated_there():
        run_like_compose(service, environment, url.password)
        migrated = subprocess.run(
            ["psql", "-h", LOCAL_DB_HOST, "-U", "postgres", "-d", url.path.lstrip("/"), "-tAc",
             "SELECT count(*) FROM refinery_schema_history"], capture_output=True, text=True)
        if migrated.returncode != 0 or int(migrated.stdout or 0) == 0:
            fail(f"the service did not use DATABASE_URL's database: {migrated.stderr}")
    with_role(url.username, url.password, url.path.lstrip("/"), migrated_there)
    print("ok: a DATABASE_URL in .env overrides the bundled database")


if __name__ == "__main__":
    main()
