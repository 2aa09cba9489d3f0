#!/usr/bin/env python3
"""Measures batch-history against raw PostgreSQL in one run (see run.sh).

For each table size: seeds a scratch database, starts the release server, and
for each operation runs the service (examples/loadgen.rs) and pgbench on the
same statements (-M prepared, same client count) back to back, in ROUNDS
rounds that alternate which goes first, so that both see the same machine.
Reports per operation the median throughput of each, the median of the
per-round ratios with its range, latency percentiles of each (pgbench's
from its per-transaction log), and CPU time per call: the server's, and
PostgreSQL's while serving the server and while serving pgbench (from
/proc: live backends and the postmaster's reaped children, so the database
must run on this machine), and the clients' own (loadgen's over its timed
calls, pgbench's whole run, from getrusage of reaped children).
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = os.environ.get("BENCH_BIN", "target/release/batch-history")
LOADGEN = "target/release/examples/loadgen"
OPS = ["create", "progress", "get", "list-deep", "list-basic", "list-filtered", "list-provider",
       "list-provider-deep", "stats"]
# The basic view is the same statement as the full one, with less sent.
PGBENCH_SCRIPT = {"list-basic": "list-deep"}
TICKS = os.sysconf("SC_CLK_TCK")
# How deep into the listing deep pages go (loadgen walks this far for page
# tokens before measuring, so it must stay a few seconds' walk).
DEEPEST = 1_000_000


def settings(argv):
    smoke = argv[1:] == ["--smoke"]
    env = os.environ
    return {
        "sizes": [int(s) for s in ("2000" if smoke else env.get("SIZES", "10000 1000000")).split()],
        "clients": 4 if smoke else int(env.get("CLIENTS", 32)),
        # GetBatchStats reads the whole table: a dashboard panel, one caller at a time.
        "stats_clients": int(env.get("STATS_CLIENTS", 1)),
        "seconds": 1 if smoke else float(env.get("BENCH_SECONDS", 10)),
        "rounds": 1 if smoke else int(env.get("ROUNDS", 3)),
        "port": int(env.get("BENCH_PORT", 50651)),
        "ops": env.get("OPS", " ".join(OPS)).split(),
        # GetBatch and RecordProgress draw from the newest HOT_ROWS seeded
        # batches, as a dashboard reads and writes its recent ones.
        "hot": hot_rows(env.get("HOT_ROWS")),
    }


def hot_rows(value):
    """HOT_ROWS as a count, None when unset; at least ten, so that a tenth
    of them (the RUNNING ones) is never empty."""
    if not value:
        return None
    if not value.isdigit() or int(value) < 10:
        sys.exit(f"HOT_ROWS={value!r}: give a whole number of seeded batches, at least 10")
    return int(value)


def run(*command, **options):
    return subprocess.run(command, check=True, text=True, **options)


def psql(database, sql):
    return run("psql", "-qtAd", database, "-c", sql, capture_output=True).stdout.strip()


def cpu(pid):
    """utime + stime, and the reaped children's, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS, (int(fields[13]) + int(fields[14])) / TICKS


def postgres_cpu(postmaster):
    """CPU seconds PostgreSQL has spent: every live backend's, and what the
    postmaster has reaped of those that exited."""
    total = cpu(postmaster)[1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                total += cpu(int(entry.name))[0]
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile: the postmaster's reaped time has it
    return total


def find_postmaster(data_directory):
    """The pid of the server started with `-D data_directory`."""
    wanted = os.path.realpath(data_directory)
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for flag, value in zip(args, args[1:]):
            if flag == b"-D" and os.path.realpath(value.decode()) == wanted:
                return int(entry.name)
    sys.exit(f"no PostgreSQL server on this machine runs from {data_directory}: "
             "bench/run.sh measures PostgreSQL's CPU through /proc")


def rss_kb(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def service_round(op, clients, rows, hot, seconds, port, server, postmaster):
    loadgen = subprocess.Popen(
        [LOADGEN, "--addr", f"http://127.0.0.1:{port}", "--clients", str(clients),
         "--seconds", str(seconds), "--seeded", str(rows), "--ops", op, "--json",
         *(["--hot", str(hot)] if hot else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Its set-up (connections; for list-deep, walking every page for tokens)
    # is not part of the calls measured.
    for line in loadgen.stderr:
        if line.strip() == "ready":
            break
    before = (cpu(server)[0], postgres_cpu(postmaster), cpu(loadgen.pid)[0])
    out, errors, status, client_cpu = finish(loadgen)
    if status:
        sys.exit(f"loadgen failed: {errors}")
    result = json.loads(out.splitlines()[-1])
    calls = max(result["ops"], 1)
    result["server_us"] = (cpu(server)[0] - before[0]) / calls * 1e6
    result["postgres_us"] = (postgres_cpu(postmaster) - before[1]) / calls * 1e6
    result["client_us"] = (client_cpu - before[2]) / calls * 1e6
    return result


def finish(child):
    """Reads `child`'s output to the end and waits for it: its stdout, stderr,
    exit status, and the CPU seconds (user + system) of its whole run. Nothing
    else is reaped meanwhile, so the growth of RUSAGE_CHILDREN is its own."""
    def children_cpu():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    before = children_cpu()
    out, errors = child.communicate()
    return out, errors, child.returncode, children_cpu() - before


def pgbench_round(op, clients, rows, hot, seconds, database, postmaster):
    before = postgres_cpu(postmaster)
    # Each transaction's latency is logged, for percentiles comparable
    # with loadgen's.
    with tempfile.TemporaryDirectory() as logs:
        pgbench = subprocess.Popen(
            ["pgbench", "-n", "-M", "prepared", "-c", str(clients),
             "-j", str(1 if clients < 2 else 2), "-T", str(int(max(seconds, 1))),
             "-l", "--log-prefix", f"{logs}/latency",
             "-D", f"seeded={rows}", "-D", f"hot={hot or rows}",
             "-D", f"deep={min(rows, DEEPEST)}", "-f", f"bench/pgbench/{PGBENCH_SCRIPT.get(op, op)}.sql", database],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out, _, status, client_cpu = finish(pgbench)
        if status:
            sys.exit(f"pgbench failed ({status}) on {op}")
        latencies = sorted(int(line.split()[2]) / 1000
                           for log in Path(logs).iterdir() for line in log.open())
    # pgbench's backends have exited by now: the postmaster has reaped them.
    time.sleep(0.2)
    processed = next(int(line.split(":")[1].split("/")[0])
                     for line in out.splitlines() if "actually processed" in line)
    tps = next(float(line.split()[2]) for line in out.splitlines() if line.startswith("tps = "))
    return {"ops_per_second": tps,
            "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
            "postgres_us": (postgres_cpu(postmaster) - before) / max(processed, 1) * 1e6,
            "client_us": client_cpu / max(processed, 1) * 1e6}


def dead_tuples(database):
    """n_dead_tup / (n_live_tup + n_dead_tup) of each month written to."""
    psql(database, "SELECT pg_stat_force_next_flush()")
    return psql(database, """SELECT string_agg(format('%s %s/%s (%s%%)', relname, n_dead_tup,
                                                      n_live_tup + n_dead_tup,
                                                      round(100.0 * n_dead_tup
                                                            / greatest(n_live_tup + n_dead_tup, 1), 1)),
                                               ', ' ORDER BY relname)
                             FROM pg_stat_user_tables
                             WHERE relname LIKE 'batches_y%' AND n_tup_ins + n_tup_upd > 0""")


def drop_first_month(database):
    """Finishes the seeded batches of January 2025 and vacuums the month,
    then takes it out as the upkeep would (batches_drop_month): its batches
    and size, the time in ms and the WAL of that, and the time of dropping
    its detached table after (batches_drop_detached)."""
    psql(database, "SET batch_history.bulk_load = 'on'; "
                   "UPDATE batches SET state = 'COMPLETED', end_time = start_time + interval '1 minute' "
                   "WHERE state = 'RUNNING' AND start_time < '2025-02-01'; "
                   "SELECT batch_totals_fold()")
    # As a month past retention is, long after its last write: vacuumed.
    # An autovacuum still at work on it would hold the drop up for a second
    # (deadlock_timeout), on the month alone, and write WAL of its own.
    psql(database, "VACUUM batches_y2025m01")
    psql(database, "CHECKPOINT")
    batches, size = psql(database, "SELECT count(*), pg_size_pretty(pg_total_relation_size("
                                   "'batches_y2025m01')) FROM batches_y2025m01").split("|")
    before = psql(database, "SELECT pg_current_wal_lsn()")
    started = time.monotonic()
    dropped = psql(database, "SELECT batches_drop_month('2025-02-02')")
    elapsed_ms = (time.monotonic() - started) * 1000
    assert dropped, "January 2025 was not dropped"
    wal = psql(database, f"SELECT pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), '{before}'))")
    started = time.monotonic()
    psql(database, "SELECT batches_drop_detached()")
    files_ms = (time.monotonic() - started) * 1000
    return batches, size, elapsed_ms, wal, files_ms


def percentile(sorted_values, fraction):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def spread(values, digits=0):
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv):
    s = settings(argv)
    run("cargo", "build", "--release", "--locked", "--quiet", "--bin", "batch-history",
        "--example", "loadgen")
    for key, default in (("PGHOST", "127.0.0.1"), ("PGPORT", "5432"), ("PGUSER", "postgres")):
        os.environ.setdefault(key, default)
    database = f"bh_bench_{os.getpid()}"
    url = f"postgres://{os.environ['PGUSER']}@{os.environ['PGHOST']}:{os.environ['PGPORT']}/{database}"
    # DB_POOLER=transaction measures the statements sent behind a
    # transaction pooler (unnamed, typed) against PostgreSQL itself.
    env = dict(os.environ, DATABASE_URL=url, DATABASE_DIRECT_URL=url,
               LISTEN_ADDR=f"127.0.0.1:{s['port']}", LOG_FORMAT="json", RUST_LOG="warn",
               # The seeded RUNNING batches are old: the stale sweep would stop them.
               STALE_AFTER="0")
    # SERVER_ENV="NAME=value ...": settings for the server alone (the load
    # generator is a tokio program too), e.g. TOKIO_WORKER_THREADS=1.
    env.update(pair.split("=", 1) for pair in os.environ.get("SERVER_ENV", "").split())
    table, memory, p50, months = [], [], {}, []
    for rows in s["sizes"]:
        psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        psql("postgres", f"CREATE DATABASE {database}")
        server = None
        try:
            run(BIN, "migrate", env=env, capture_output=True)
            print(f"seeding {rows} batches", file=sys.stderr)
            run("psql", "-qd", database, "-v", f"rows={rows}", "-f", "bench/seed.sql",
                capture_output=True)
            postmaster = find_postmaster(psql(database, "SHOW data_directory"))
            server = subprocess.Popen([BIN, "serve"], env=env)
            while subprocess.run([BIN, "healthcheck", "--addr", f"127.0.0.1:{s['port']}"],
                                 capture_output=True).returncode:
                time.sleep(0.2)
            idle = rss_kb(server.pid, "VmRSS")
            for op in s["ops"]:
                clients = s["stats_clients"] if op == "stats" else s["clients"]
                rounds = []
                for round_ in range(s["rounds"]):
                    measure = {
                        "service": lambda: service_round(op, clients, rows, s["hot"], s["seconds"],
                                                         s["port"], server.pid, postmaster),
                        "pgbench": lambda: pgbench_round(op, clients, rows, s["hot"], s["seconds"],
                                                         database, postmaster),
                    }
                    order = ["service", "pgbench"] if round_ % 2 == 0 else ["pgbench", "service"]
                    rounds.append({kind: measure[kind]() for kind in order})
                table.append((op, rows, clients, rounds))
                p50[op, rows] = statistics.median(r["service"]["p50_ms"] for r in rounds)
            memory.append((rows, idle, rss_kb(server.pid, "VmHWM")))
            server.terminate()
            server.wait()
            server = None
            months.append((rows, dead_tuples(database), drop_first_month(database)))
        finally:
            if server:
                server.terminate()
                server.wait()
            psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    print(f"\n{s['rounds']} rounds of {s['seconds']:g} s per operation, alternating which goes "
          "first; medians (min-max); CPU in µs per call"
          + (f"; get and progress on the newest {s['hot']} seeded batches" if s["hot"] else ""))
    print(f"{'operation':<14} {'rows':>8} {'cl':>3} {'service/s':>20} {'pgbench/s':>20} "
          f"{'ratio':>17} {'server CPU':>18} {'PG CPU (service)':>18} {'PG CPU (pgbench)':>18} "
          f"{'loadgen CPU':>14} {'pgbench CPU':>14} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'pgbench p50':>11} {'pgbench p99':>11}  errors")
    for op, rows, clients, rounds in table:
        service = [r["service"] for r in rounds]
        bench = [r["pgbench"] for r in rounds]
        ratios = [r["service"]["ops_per_second"] / r["pgbench"]["ops_per_second"] for r in rounds]
        errors = {}
        for r in service:
            for code, count in r["errors"].items():
                errors[code] = errors.get(code, 0) + count
        print(f"{op:<14} {rows:>8} {clients:>3} {spread([r['ops_per_second'] for r in service]):>20} "
              f"{spread([r['ops_per_second'] for r in bench]):>20} {spread(ratios, 2):>17} "
              f"{spread([r['server_us'] for r in service]):>18} "
              f"{spread([r['postgres_us'] for r in service]):>18} "
              f"{spread([r['postgres_us'] for r in bench]):>18} "
              f"{statistics.median(r['client_us'] for r in service):>14.0f} "
              f"{statistics.median(r['client_us'] for r in bench):>14.0f} "
              f"{statistics.median(r['p50_ms'] for r in service):>7.2f} "
              f"{statistics.median(r['p99_ms'] for r in service):>7.2f} "
              f"{statistics.median(r['p50_ms'] for r in bench):>11.2f} "
              f"{statistics.median(r['p99_ms'] for r in bench):>11.2f}  {errors or 'none'}")
    print()
    for rows, idle, peak in memory:
        print(f"server RSS at {rows} rows: idle {idle / 1024:.1f} MiB, "
              f"peak under load {peak / 1024:.1f} MiB")
    for rows, dead, (batches, size, ms, wal, files_ms) in months:
        print(f"at {rows} rows: dead tuples after the run, per month: {dead}")
        print(f"at {rows} rows: taking January 2025 out ({batches} batches, {size}): "
              f"{ms:.0f} ms, {wal} of WAL; then dropping its table: {files_ms:.0f} ms")
    if len(s["sizes"]) > 1:
        small, large = s["sizes"][0], s["sizes"][-1]
        for op in ("list-deep", "list-filtered"):
            print(f"{op} p50 at {large} rows / at {small} rows: "
                  f"{p50[op, large] / p50[op, small]:.2f}")


if __name__ == "__main__":
    main(sys.argv)
