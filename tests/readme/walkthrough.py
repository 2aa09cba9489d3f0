#!/usr/bin/env python3
"""Runs the README's grpcurl walkthrough, as written, against a live server,
so that a stale README fails CI. Each command must succeed; the listing must
show the batch the walkthrough created and finished.

Usage: walkthrough.py PATH/TO/batch-history   (grpcurl and psql on PATH)
"""
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def commands():
    text = open(README, encoding="utf-8").read()
    section = text.split("\n## grpcurl", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    found, pending = [], ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.strip().startswith("#")):
            continue
        pending += line + "\n"
        # A command ends at a line that is neither continued with a backslash
        # nor inside a quoted (JSON) argument.
        if not line.endswith("\\") and pending.count("'") % 2 == 0:
            found.append(pending.strip())
            pending = ""
    return found


def run_walkthrough(addr):
    """Runs the README's commands against the server at `addr`."""
    outputs = []
    found = commands()
    if len(found) < 7:
        sys.exit(f"FAIL: expected the README's grpcurl walkthrough, found {found}")
    for command in found:
        command = command.replace("localhost:50051", addr)
        run = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"FAIL: {command}\n{run.stderr}")
        outputs.append(run.stdout)
        print(f"ok: {command[:100]}")
    listing = outputs[-2]
    if "batch_1760796202_0a1b2c3d" not in listing or "COMPLETED" not in listing:
        sys.exit(f"FAIL: the listing does not show the finished batch:\n{listing}")
    if "SERVING" not in outputs[-1]:
        sys.exit(f"FAIL: health is not SERVING:\n{outputs[-1]}")
    print("ok: the README walkthrough works as written")


def main():
    binary = os.path.abspath(sys.argv[1])
    admin_url = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    database = f"bh_readme_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", admin_url, "-qc", f"CREATE DATABASE {database}"], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    env = dict(os.environ, LISTEN_ADDR=addr, LOG_FORMAT="pretty",
               DATABASE_URL=urlunsplit(urlsplit(admin_url)._replace(path="/" + database)))
    server = subprocess.Popen([binary, "serve"], env=env)
    try:
        while subprocess.run([binary, "healthcheck", "--addr", addr], capture_output=True).returncode:
            if server.poll() is not None:
                sys.exit("FAIL: the server did not start")
            time.sleep(0.2)
        run_walkthrough(addr)
    finally:
        server.terminate()
        server.wait(timeout=15)
        subprocess.run(["psql", admin_url, "-qc", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"])


if __name__ == "__main__":
    main()
