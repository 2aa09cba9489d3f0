#!/usr/bin/env python3
"""The dashboard's whole history, two ways, side by side in one run.

The plan this service replaces kept the dashboard's own SQLAlchemy model on
PostgreSQL: `get_batch_history()` was `BatchHistory.query.order_by(
started_at.desc()).all()` and a `to_dict()` per row. Through the service it
is `BatchHistory.history()` of the client package. Both read the same
history: made by the dashboard's own save code (tests/legacy), written to a
PostgreSQL table made by the model's `create_all`, and imported from there
into the service with `batch-history import`.

Usage: legacy_history.py [--rows N] [--runs R] [BINARY]
Needs SQLAlchemy, psycopg2, the client package, and TEST_DATABASE_URL (else
the server on 127.0.0.1:5432) where scratch databases may be made.
Prints one line per run and the medians, with the ratio service / plan.
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests/legacy"), str(REPO / "clients/python/tests")]

from conftest import run_server, scratch_database  # noqa: E402
from legacy_model import BatchHistory as Row, create_all, engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

ZONE = "Europe/London"


def fill(url, rows):
    """The history the dashboard's code writes, in the plan's table."""
    with tempfile.TemporaryDirectory() as scratch:
        path = pathlib.Path(scratch) / "batches.db"
        subprocess.run([sys.executable, REPO / "tests/legacy/make_real_history.py", path,
                        "--rows", str(rows), "--seed", "3", "--timezone", ZONE],
                       check=True, capture_output=True)
        import sqlite3
        columns = [c.name for c in Row.__table__.columns]
        with sqlite3.connect(path) as source:
            records = [dict(zip(columns, r)) for r in
                       source.execute(f"SELECT {', '.join(columns)} FROM batch_history")]
    create_all(url)
    made = engine(url)
    with Session(made) as session:
        session.execute(Row.__table__.insert(), records)
        session.commit()
    return made


def plan(made):
    with Session(made) as session:
        return [b.to_dict() for b in
                session.query(Row).order_by(Row.started_at.desc()).all()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("binary", nargs="?", default=str(REPO / "target/release/batch-history"))
    args = ap.parse_args()

    import conftest
    conftest.BINARY = args.binary
    from batch_history_client import BatchHistory
    with scratch_database("bench_plan") as plan_url, scratch_database("bench_svc") as svc_url:
        made = fill(plan_url, args.rows)
        subprocess.run([args.binary, "import", "--source-timezone", ZONE, plan_url],
                       env={"DATABASE_URL": svc_url, "PATH": "/usr/bin", "RUST_LOG": "warn"},
                       check=True, capture_output=True)
        # No stale sweep: it would rightly stop the history's abandoned batches.
        with run_server(svc_url, extra_env={"RUST_LOG": "warn", "STALE_AFTER": "0"}) as addr, \
                BatchHistory(addr, timezone=ZONE) as history:
            plan(made), history.history()  # warm both: connections, caches, statements
            times = {"plan": [], "service": []}
            for run in range(args.runs):
                for name, read in (("plan", lambda: plan(made)), ("service", history.history)):
                    began = time.perf_counter()
                    rows = read()
                    times[name].append((time.perf_counter() - began) * 1000)
                    assert len(rows) == args.rows, (name, len(rows))
                print(f"run {run + 1}: plan (SQLAlchemy to_dict) {times['plan'][-1]:.0f} ms, "
                      f"service (history()) {times['service'][-1]:.0f} ms")
            # The same rows; the order differs only in the hour the clocks go
            # back, which the plan's text order gets wrong (docs/MIGRATING.md).
            by_id = lambda rows: json.dumps(sorted(rows, key=lambda r: r["id"]),  # noqa: E731
                                            sort_keys=True)
            same = by_id(plan(made)) == by_id(history.history())
        made.dispose()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.rows} rows, median of {args.runs}: plan {medians['plan']:.0f} ms, "
          f"service {medians['service']:.0f} ms, service/plan "
          f"{medians['service'] / medians['plan']:.2f}; same rows: {same}")


if __name__ == "__main__":
    main()
