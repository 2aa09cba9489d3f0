#!/usr/bin/env python3
"""The compose stack on a real Docker engine, as an operator runs it.

Needs a running engine, docker-compose, grpcurl and the base images (real, or
the CI stand-ins tests/docker/standins.sh builds). Builds the unchanged
Dockerfile, then with docker-compose.yml and .env.example (plus a password,
and free host ports: PostgreSQL already runs on this machine's 5432):
  - both services healthy; the README's grpcurl walkthrough passes;
  - PostgreSQL stopped: the service's healthcheck fails, and passes again
    once PostgreSQL is back;
  - `down` then `up` keeps the data;
  - the import profile: a dry run, a run, a re-run that adds nothing, from a
    0600 root-owned file and from a WAL-mode file with rows only in its
    -wal log; a missing directory is refused and not created;
  - every line the service logged is JSON, with no password and no Rust
    debug string (`Some(...)`); the Dockerfile names no BuildKit frontend;
and always `down -v`. Prints the timings and the image size.

Usage: compose_job.py   (from the repository root)
"""
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "readme"))
from walkthrough import run_walkthrough  # noqa: E402

PROJECT = "bhci"
PASSWORD = "Pw-" + secrets.token_hex(8) + "#:/@"
LEGACY_SCHEMA = """CREATE TABLE batch_history (
    id INTEGER NOT NULL PRIMARY KEY, batch_id VARCHAR(100) NOT NULL,
    started_at VARCHAR(50) NOT NULL, completed_at VARCHAR(50), model VARCHAR(100),
    topic_filter VARCHAR(200), difficulty_filter VARCHAR(50), reasoning_instruction TEXT,
    target_count INTEGER, samples_generated INTEGER, total_tokens INTEGER,
    status VARCHAR(20), errors TEXT, model_switches TEXT)"""


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, env_file):
        self.env_file = env_file

    def compose(self, *args, check=True, profile=None):
        command = ["docker-compose", "--env-file", self.env_file, "-p", PROJECT]
        if profile:
            command += ["--profile", profile]
        run = subprocess.run(command + list(args), capture_output=True, text=True)
        if check and run.returncode != 0:
            fail(f"docker-compose {' '.join(args)}:\n{run.stdout}{run.stderr}")
        return run

    def container(self, service):
        return self.compose("ps", "-q", service).stdout.strip()

    def health(self, service):
        container = self.container(service)
        if not container:
            return "absent"
        return subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", container],
                              capture_output=True, text=True).stdout.strip()

    def wait_healthy(self, service, within):
        start = time.monotonic()
        while self.health(service) != "healthy":
            if time.monotonic() - start > within:
                fail(f"{service} not healthy within {within} s:\n"
                     + self.compose("logs", "--no-color", "--tail", "40", service).stdout)
            time.sleep(0.5)
        return time.monotonic() - start

    def seconds_to_healthy(self, service):
        """From the container's start to its first passing health check."""
        state = json.loads(subprocess.run(
            ["docker", "inspect", "-f", "{{json .State}}", self.container(service)],
            capture_output=True, text=True).stdout)
        passed = [check["End"] for check in state["Health"]["Log"] if check["ExitCode"] == 0]
        return seconds_between(state["StartedAt"], passed[0])

    def service_healthcheck(self):
        """The service's own healthcheck command, run in its container now."""
        return subprocess.run(
            ["docker", "exec", self.container("batch-history"),
             "batch-history", "healthcheck", "--addr", "127.0.0.1:50051"],
            capture_output=True).returncode == 0


def seconds_between(start, end):
    """Seconds between two of Docker's RFC 3339 timestamps (nanoseconds)."""
    def parse(stamp):
        day, clock = stamp.rstrip("Z").split("T")
        whole, _, fraction = clock.partition(".")
        return (time.mktime(time.strptime(f"{day}T{whole}", "%Y-%m-%dT%H:%M:%S"))
                + float("0." + (fraction or "0")[:9]))
    return parse(end) - parse(start)


def legacy_rows(db, first, count, status="completed"):
    for n in range(first, first + count):
        db.execute("INSERT INTO batch_history (id, batch_id, started_at, completed_at, model, "
                   "target_count, samples_generated, total_tokens, status) VALUES "
                   "(?, ?, '2025-03-01T10:00:00', '2025-03-01T10:30:00', 'llama-3.3-70b', "
                   "10, 10, 500, ?)", (n, f"legacy_{n:04d}", status))


def import_report(stack, file_name, *flags):
    run = stack.compose("run", "--rm", "import",
                        "import-sqlite", f"/data/{file_name}", "--json", *flags,
                        profile="import", check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or not lines:
        fail(f"the import of {file_name} {flags} failed:\n{run.stdout}{run.stderr}")
    return json.loads(lines[-1])


def check_import(stack, legacy_dir):
    # A 0600 file owned by root, which the image's user could not read.
    private = os.path.join(legacy_dir, "batches.db")
    with sqlite3.connect(private) as db:
        db.execute(LEGACY_SCHEMA)
        legacy_rows(db, 1, 40)
    os.chown(private, 0, 0)
    os.chmod(private, 0o600)
    dry = import_report(stack, "batches.db", "--dry-run")
    if not dry["dry_run"] or dry["imported"] != 40:
        fail(f"dry run: {dry}")
    done = import_report(stack, "batches.db")
    again = import_report(stack, "batches.db")
    if done["imported"] != 40 or again["imported"] != 0 or again["already_present"] != 40:
        fail(f"run then re-run: {done} / {again}")
    print("ok: import of a 0600 root-owned file: dry run 40, run 40, re-run 0 new (40 present)")

    # A WAL-mode file copied while its writer ran: 5 rows only in the -wal.
    live = os.path.join(tempfile.mkdtemp(), "live.db")
    writer = sqlite3.connect(live, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute(LEGACY_SCHEMA)
    legacy_rows(writer, 101, 5)
    shutil.copy(live, os.path.join(legacy_dir, "wal.db"))
    shutil.copy(live + "-wal", os.path.join(legacy_dir, "wal.db-wal"))
    writer.close()
    before = sorted(os.listdir(legacy_dir))
    wal = import_report(stack, "wal.db")
    if wal["imported"] != 5:
        fail(f"WAL-mode file: {wal}")
    if sorted(os.listdir(legacy_dir)) != before:
        fail(f"the import wrote beside the file: {sorted(os.listdir(legacy_dir))}")
    print("ok: import of a WAL-mode file with rows only in its -wal: 5, nothing written beside it")


def check_missing_directory(env_file):
    missing = os.path.join(tempfile.mkdtemp(), "no-such-dir")
    with open(env_file, "a") as env:
        env.write(f"\nLEGACY_DB_DIR={missing}\n")
    run = Stack(env_file).compose("run", "--rm", "import", profile="import", check=False)
    if run.returncode == 0:
        fail("the import ran with a missing legacy directory")
    if os.path.exists(missing):
        fail(f"docker created the missing legacy directory {missing}")
    print(f"ok: a missing legacy directory is refused, not created: {run.stderr.strip()[-120:]}")


def check_logs(stack):
    logs = stack.compose("logs", "--no-color", "batch-history").stdout
    lines = [line.split("|", 1)[1].strip() for line in logs.splitlines() if "|" in line]
    if not lines:
        fail("the service logged nothing")
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            fail(f"a log line is not JSON: {line}")
        if PASSWORD in line or PASSWORD.split("#")[0] in line:
            fail(f"a log line holds the password: {line}")
        if "Some(" in line:
            fail(f"a log line holds a Rust debug string: {line}")
    print(f"ok: all {len(lines)} log lines of the service are JSON, none holds the password")


def main():
    with open("Dockerfile") as dockerfile:
        if dockerfile.readline().startswith("# syntax"):
            fail("the Dockerfile names a BuildKit frontend image, which offline builders cannot fetch")
    build_start = time.monotonic()
    subprocess.run(["docker", "build", "-q", "-t", "batch-history:latest", "."], check=True,
                   stdout=subprocess.DEVNULL)
    build_time = time.monotonic() - build_start
    size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}",
                           "batch-history:latest"], capture_output=True, text=True).stdout
    user = subprocess.run(["docker", "image", "inspect", "-f", "{{.Config.User}}",
                           "batch-history:latest"], capture_output=True, text=True).stdout.strip()
    print(f"ok: docker build {build_time:.0f} s, image {int(size) / 1e6:.1f} MB, user {user}")
    if user != "65532:65532":
        fail(f"the image runs as {user!r}, not 65532")

    port, ui_port = free_port(), free_port()
    legacy_dir = tempfile.mkdtemp()
    env_file = tempfile.NamedTemporaryFile("w", suffix=".env", delete=False).name
    with open(".env.example") as example, open(env_file, "w") as env:
        env.write(example.read() + f"\nPOSTGRES_PASSWORD={PASSWORD}\n"
                  f"BATCH_HISTORY_PORTS={port}\nBATCH_HISTORY_UI_PORTS={ui_port}\n"
                  f"POSTGRES_HOST_PORT={free_port()}\n"
                  f"LEGACY_DB_DIR={legacy_dir}\n")
    stack = Stack(env_file)
    try:
        up = time.monotonic()
        stack.compose("up", "-d", "--no-build")
        stack.wait_healthy("batch-history", 120)
        print(f"ok: both healthy {time.monotonic() - up:.1f} s after up: PostgreSQL "
              f"{stack.seconds_to_healthy('postgres'):.1f} s after its start, batch-history "
              f"{stack.seconds_to_healthy('batch-history'):.1f} s after its own")
        run_walkthrough(f"127.0.0.1:{port}")
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/", timeout=10) as page:
            if "batch_1760796202_0a1b2c3d" not in page.read().decode():
                fail("the web page does not list the walkthrough's batch")
        print("ok: the web page lists the walkthrough's batch")

        stack.compose("stop", "postgres")
        start = time.monotonic()
        while stack.service_healthcheck():
            if time.monotonic() - start > 30:
                fail("the service stayed SERVING with PostgreSQL stopped")
            time.sleep(0.5)
        print(f"ok: PostgreSQL stopped: the service's healthcheck fails after "
              f"{time.monotonic() - start:.1f} s")
        stack.compose("start", "postgres")
        start = time.monotonic()
        while not stack.service_healthcheck():
            if time.monotonic() - start > 60:
                fail("the service did not come back once PostgreSQL was")
            time.sleep(0.5)
        print(f"ok: PostgreSQL back: the healthcheck passes after {time.monotonic() - start:.1f} s")

        check_logs(stack)
        stack.compose("down")
        stack.compose("up", "-d", "--no-build")
        stack.wait_healthy("batch-history", 120)
        kept = subprocess.run(
            ["grpcurl", "-plaintext", "-d", '{"batch_id": "batch_1760796202_0a1b2c3d"}',
             f"127.0.0.1:{port}", "batchhistory.v1.BatchHistory/GetBatch"],
            capture_output=True, text=True)
        if kept.returncode != 0 or "COMPLETED" not in kept.stdout:
            fail(f"the walkthrough's batch did not survive down/up:\n{kept.stderr}")
        print("ok: down then up keeps the data")

        check_import(stack, legacy_dir)
        check_logs(stack)
        check_missing_directory(env_file)
    finally:
        Stack(env_file).compose("--profile", "import", "--profile", "balanced", "down", "-v",
                                "--remove-orphans", check=False)
        shutil.rmtree(legacy_dir, ignore_errors=True)
        os.unlink(env_file)


if __name__ == "__main__":
    main()
