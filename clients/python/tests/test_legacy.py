"""The client against the legacy dashboard's own behaviour (tests/legacy:
its BatchService's history methods and its worker's sequence, rebuilt from
the real code): its history, imported, reads back exactly as its
to_dict(); the worker's saves store what the legacy saves stored; and
stop, stop_all, stuck and history answer as the legacy methods did."""
import copy
import json
import subprocess
import sys
import tempfile
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from conftest import BINARY, REPO, serve

sys.path.insert(0, str(REPO / "tests/legacy"))
import legacy_app  # noqa: E402
import worker  # noqa: E402

ZONE = "Europe/London"


# Imported history holds batches left running long ago: the stale sweep
# would stop them, as it should in service, while a test compares.
NO_SWEEP = {"STALE_AFTER": "0"}


@pytest.fixture(scope="module")
def own_server():
    """A server whose database holds only what these tests put there."""
    with serve(NO_SWEEP) as server:
        yield server


@pytest.fixture
def legacy(tmp_path, monkeypatch):
    """The legacy BatchService on a SQLite history of its own, its clock in ZONE."""
    monkeypatch.setattr(legacy_app, "now", local_now)
    service = legacy_app.open_history(str(tmp_path / "batches.db"))
    yield service
    service.close()


@pytest.fixture
def history(own_server):
    client = make_client(own_server)
    yield client
    client.close()


def make_client(server, **options):
    from batch_history_client import BatchHistory
    return BatchHistory(server.addr, timezone=ZONE, backoff=0.01, **options)


def local_now():
    return datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None)


def canonical(row):
    """A row as JSON text: tells 7200 from 7200.0, unlike ==."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def new_id():
    return f"batch_{int(datetime.now().timestamp())}_{uuid.uuid4().hex[:8]}"


class Clock:
    """The dashboard's datetime.now(), a second per reading from now: two
    runs read the same times."""

    def __init__(self, start):
        self.at = start

    def __call__(self):
        self.at += timedelta(seconds=1)
        return self.at


def test_imported_history_reads_exactly_as_the_legacy_to_dict(own_server):
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "batches.db"
        made = subprocess.run(
            [sys.executable, REPO / "tests/legacy/make_real_history.py", path, "--rows", "300",
             "--seed", "7", "--timezone", ZONE], capture_output=True, check=True)
        legacy = json.loads(made.stdout)
        subprocess.run([BINARY, "import-sqlite", "--source-timezone", ZONE, path],
                       env={"DATABASE_URL": own_server.database_url, "PATH": "/usr/bin"},
                       capture_output=True, check=True)

    history = make_client(own_server)
    try:
        rows = history.history()
        expected = {row["id"]: canonical(row) for row in legacy["history"]}
        assert len(rows) == len(expected) == 300
        for row in rows:
            assert canonical(row) == expected[row["id"]], row["id"]
        # Newest first by the true start, which local text does not always tell.
        starts = [legacy["instants"][row["id"]]["started_at"] for row in rows]
        assert starts == sorted(starts, reverse=True)
        response = history.history_response()
        assert (response["success"], response["count"]) == (True, 300)
        assert [r["id"] for r in response["batches"]] == [r["id"] for r in rows]
        some = legacy["history"][0]
        assert canonical(history.get(some["id"])) == canonical(some)
        assert history.get("batch_1_00000000") is None
    finally:
        history.close()


# The steps of one run of the worker: samples, a rate limit that switches the
# model, more samples, a second switch, and samples up to the target of 30.
STEPS = ([("sample", 1200)] * 9 + [("switch", "qwen-3-32b", "429 rate limit exceeded")]
         + [("sample", 900)] * 6 + [("switch", "gpt-oss-120b", "model not found")]
         + [("sample", 1500)] * 20)
# How each ending reads: (legacy status, the service's status); the legacy
# save wrote `completed` for every ending (docs/MIGRATING.md).
ENDINGS = {
    "completes": (STEPS, ("completed", "completed")),
    "crashes": (STEPS[:14] + [("crash", "KeyError('choices')")] + STEPS[14:],
                ("completed", "failed")),
    "is stopped": (STEPS, ("completed", "stopped")),
}


def hooks(stop=None, probe=None):
    """What happens beside the worker: `probe()` after its 5th step,
    `stop()` after its 15th."""
    def between(step):
        if step == 5 and probe:
            probe()
        if step == 15 and stop:
            stop()
    return between


@pytest.mark.parametrize("ending", ENDINGS)
def test_the_real_workers_run_stores_what_the_legacy_saves_stored(ending, legacy, history):
    steps, (legacy_status, our_status) = ENDINGS[ending]
    batch_id = new_id()
    legacy.start_batch(batch_id, 30, "groq", "llama-3.3-70b-versatile",
                       topic_filter="Tort Law - Negligence", reasoning_instruction="Cite it.",
                       save=lambda s: None)
    # The client's dashboard: the same state, its own memory and lock.
    active, lock = {batch_id: copy.deepcopy(legacy.active_batches[batch_id])}, threading.Lock()
    theirs, ours, answers, merged = [], [], {}, {}

    def legacy_save(state):
        legacy._save_batch_to_db(state)
        theirs.append(legacy.get_batch(batch_id))

    def our_save(state):
        history.save(state)
        assert history.flush(10), "the save reached the service"
        ours.append(history.get(batch_id))

    legacy_save(legacy.active_batches[batch_id])
    our_save(active[batch_id])
    stop, start = ending == "is stopped", local_now()
    worker.run(legacy.active_batches[batch_id], steps, legacy_save, legacy.batch_lock,
               now=Clock(start), between=hooks(
                   stop and (lambda: answers.setdefault("legacy", legacy.stop_batch(batch_id))),
                   lambda: merged.setdefault("legacy", legacy.get_batch_history())))
    worker.run(active[batch_id], steps, our_save, lock, now=Clock(start), between=hooks(
        stop and (lambda: answers.setdefault("ours", history.stop(batch_id, active, lock))),
        lambda: merged.setdefault("ours", history.history(active, lock))))

    assert len(ours) == len(theirs) >= 3, "a save at start, every 10 samples, and at the end"
    for step, (our_row, their_row) in enumerate(zip(ours, theirs)):
        last = step == len(ours) - 1
        if last:
            assert (their_row.pop("status"), our_row.pop("status")) == (legacy_status, our_status)
            if stop:  # stamped by each side's own clock when it stopped
                assert their_row.pop("completed_at") and our_row.pop("completed_at")
        assert canonical(our_row) == canonical(their_row), f"save {step}"
    assert ours[-1]["model"] == ("gpt-oss-120b" if ending == "completes" else "qwen-3-32b")
    if ending == "crashes":
        assert ours[-1]["errors"][-1]["error"] == "Batch worker crashed: KeyError('choices')"
        assert ours[-1]["errors"][-1]["timestamp"] == theirs[-1]["errors"][-1]["timestamp"]
    if stop:
        assert answers["ours"] == answers["legacy"] == {
            "success": True, "stopped_batches": [batch_id], "count": 1}
        assert ours[-1]["samples_generated"] < 30, "the worker ended at the stop"
    # Mid-run, the history merged the worker's live state the same way.
    our_row = next(r for r in merged["ours"] if r["id"] == batch_id)
    their_row = next(r for r in merged["legacy"] if r["id"] == batch_id)
    assert canonical(our_row) == canonical(their_row)
    assert our_row["samples_generated"] == 5 and "provider_switches" in our_row


def test_a_running_batch_not_yet_saved_is_listed_first(legacy, history):
    batch_id = new_id()
    legacy.start_batch(batch_id, 10, "cerebras", "m", save=lambda s: None)
    active = {batch_id: copy.deepcopy(legacy.active_batches[batch_id])}
    ours, theirs = history.history(active)[0], legacy.get_batch_history()[0]
    assert canonical(ours) == canonical(theirs)
    assert ours["id"] == batch_id and ours["target"] == 10


def saved_pair(legacy, history, started_at=None, samples=0, running=True):
    """One batch saved by both sides (the legacy save and the client's),
    and the client's copy of its state."""
    batch_id = new_id()
    state = legacy.create_batch_state(batch_id, "groq", "m", 50)
    state.update(samples_generated=samples, running=running)
    if started_at:
        state["started_at"] = started_at.isoformat()
    ours = copy.deepcopy(state)
    legacy.active_batches[batch_id] = state
    legacy._save_batch_to_db(state)
    history.save(ours)
    assert history.flush(10)
    return batch_id, ours


def test_stop_and_stop_all_answer_as_the_legacy_methods(legacy, history):
    active, lock = {}, threading.Lock()

    def both(legacy_call, our_call):
        theirs, ours = legacy_call(), our_call()
        assert ours == theirs
        return ours

    unknown = new_id()
    assert both(lambda: legacy.stop_batch(unknown),
                lambda: history.stop(unknown, active, lock))["error"] == (
        f"Batch {unknown} not found or already stopped")
    # Running in the database only: a worker that died with its dashboard.
    orphan, _ = saved_pair(legacy, history)
    del legacy.active_batches[orphan]
    assert both(lambda: legacy.stop_batch(orphan), lambda: history.stop(orphan, active, lock)) == {
        "success": True, "stopped_batches": [orphan], "count": 1}
    assert legacy.get_batch(orphan)["status"] == history.get(orphan)["status"] == "stopped"
    assert not both(lambda: legacy.stop_batch(orphan),
                    lambda: history.stop(orphan, active, lock))["success"]
    # In memory and finished.
    done, ours = saved_pair(legacy, history, running=False)
    active[done] = ours
    assert both(lambda: legacy.stop_batch(done), lambda: history.stop(done, active, lock)) == {
        "success": False, "error": "Batch not found or already stopped"}
    assert both(legacy.stop_batch, lambda: history.stop(None, active, lock))["success"] is False

    # stop_all: the running batches in memory first.
    running = []
    for _ in range(2):
        batch_id, ours = saved_pair(legacy, history)
        active[batch_id] = ours
        running.append(batch_id)
    assert both(legacy.stop_all_batches, lambda: history.stop_all(active, lock)) == {
        "success": True, "message": "Stopped 2 batch(es)", "stopped_batch_ids": running}
    assert history.flush(10)
    assert [history.get(b)["status"] for b in running] == ["stopped", "stopped"]
    assert all(not active[b]["running"] for b in running)


def test_stop_all_stops_what_the_database_holds_running_when_memory_holds_none(
        own_server, legacy, tmp_path):
    # A server of its own: stop_all without running batches in memory stops
    # every batch the history holds as running.
    with serve() as server:
        history = make_client(server)
        try:
            orphan, _ = saved_pair(legacy, history)
            del legacy.active_batches[orphan]
            expected = {"success": True, "message": "Stopped 1 stuck batch(es) from database"}
            assert legacy.stop_all_batches() == expected
            assert history.stop_all({}) == expected
            assert history.get(orphan)["status"] == "stopped"
            nothing = {"success": False, "error": "No batch generation running"}
            assert legacy.stop_all_batches() == history.stop_all({}) == nothing
        finally:
            history.close()


def test_stuck_batches_are_found_and_stopped_as_the_legacy_check_did(legacy, history):
    now = local_now()
    active, lock = {}, threading.Lock()
    cases = {"idle 90 min": (90, 0), "busy 90 min": (90, 5), "idle 30 min": (30, 0),
             "busy 150 min": (150, 5)}
    ids = {}
    for name, (minutes, samples) in cases.items():
        batch_id, ours = saved_pair(legacy, history, now - timedelta(minutes=minutes), samples)
        active[batch_id] = ours
        ids[name] = batch_id
    # Running in the history but not in this dashboard's memory: left alone.
    elsewhere, _ = saved_pair(legacy, history, now - timedelta(minutes=200))
    del legacy.active_batches[elsewhere]

    theirs, ours = legacy.check_stuck_batches(), history.stuck(60, active, lock)
    for answer in (theirs, ours):
        # The same dicts in both lists, as the legacy answer had them.
        minutes = sorted(info.pop("elapsed_minutes") for info in answer["stuck_batches"])
        assert abs(minutes[0] - 90) < 1 and abs(minutes[1] - 150) < 1, minutes
    key = lambda info: info["batch_id"]  # noqa: E731
    for field in ("stuck_batches", "stopped_batches"):
        assert sorted(ours.pop(field), key=key) == sorted(theirs.pop(field), key=key)
    assert ours == theirs == {"success": True, "count": 2, "stopped_count": 2,
                              "threshold_minutes": 60,
                              "message": "Automatically stopped 2 stuck batch(es)"}
    assert history.flush(10)
    for name in ("idle 90 min", "busy 150 min"):
        state = active[ids[name]]
        assert state["running"] is False
        assert state["errors"][-1]["error"].startswith("Automatically stopped: stuck for ")
        assert history.get(ids[name])["status"] == "stopped"
    assert history.get(ids["idle 30 min"])["status"] == "running"
    assert history.get(elsewhere)["status"] == "running"
    nothing = history.stuck(60, active, lock)
    assert (nothing["count"], nothing["message"]) == (0, "No stuck batches found")


class _LoseFirstSaveAnswer(grpc.UnaryUnaryClientInterceptor):
    """Lets each SaveBatch reach the server, then reports the first one as
    past its deadline, as if its answer had been lost."""

    def __init__(self):
        self.lost, self.saves = False, 0

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        if details.method.endswith("/SaveBatch"):
            self.saves += 1
            outcome.result()
            if not self.lost:
                self.lost = True
                raise _DeadlineExceeded()
        return outcome


class _DeadlineExceeded(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self):
        return "lost"


def test_the_older_state_shape_is_still_saved_and_a_lost_answer_is_sent_again(own_server):
    lose = _LoseFirstSaveAnswer()
    channel = grpc.intercept_channel(grpc.insecure_channel(own_server.addr), lose)
    history = make_client(own_server, channel=channel)
    try:
        batch_id = "batch_1761439200_5a4e0001"
        state = {"id": batch_id, "started_at": "2025-10-26T01:40:00", "status": "running",
                 "current_model": "m", "target": 50, "samples_generated": 10,
                 "tokens_used": 12000, "errors": [{"error": "x", "elapsed_seconds": 7200}],
                 "model_switches": [], "completed_at": None}
        history.save(dict(state))
        history.save(dict(state, status="completed", completed_at="2025-10-26T01:05:00"))
        assert history.flush(10)
        row = history.get(batch_id)
        assert (row["status"], row["target"], row["tokens_used"]) == ("completed", 50, 12000)
        assert isinstance(row["errors"][0]["elapsed_seconds"], int)
        assert lose.lost and history.save_stats.retries >= 1
    finally:
        history.close()


def test_the_dashboards_postgresql_history_imports_exactly_and_once(own_server):
    """A dashboard that set DATABASE_URL kept its table in PostgreSQL, made by
    flask-sqlalchemy's create_all: imported from there, it reads back as its
    to_dict(), and importing again adds nothing. 5,000 rows: more than the
    connection buffers, so an import that queried the source while its rows
    stream in would hang here (it did, at 5,000)."""
    from conftest import scratch_database
    with scratch_database("legacy_pg") as source, serve(NO_SWEEP) as server:
        made = subprocess.run(
            [sys.executable, REPO / "tests/legacy/make_real_history.py", source, "--rows", "5000",
             "--seed", "11", "--timezone", ZONE], capture_output=True, check=True)
        legacy = json.loads(made.stdout)

        def run_import(*flags):
            done = subprocess.run(
                [BINARY, "import", "--json", "--source-timezone", ZONE, *flags, source],
                env={"DATABASE_URL": server.database_url, "PATH": "/usr/bin"},
                capture_output=True, text=True, check=True)
            return json.loads(done.stdout)

        dry = run_import("--dry-run")
        assert (dry["committed"], dry["imported"], dry["rows_read"]) == (False, 5000, 5000)
        first = run_import()
        assert (first["committed"], first["imported"], first["invalid"]) == (True, 5000, 0)
        assert "password" not in first["path"] and first["path"].startswith("postgres")
        again = run_import()
        assert (again["imported"], again["already_present"]) == (0, 5000)

        with make_client(server) as history:
            rows = history.history()
        expected = {row["id"]: canonical(row) for row in legacy["history"]}
        assert len(rows) == len(expected) == 5000
        for row in rows:
            assert canonical(row) == expected[row["id"]], row["id"]


def test_a_postgresql_source_without_the_history_says_so_without_its_password(own_server):
    from conftest import scratch_database
    with scratch_database("legacy_empty") as source:
        with_password = source.replace("postgres@", "postgres:hunter2@", 1)
        done = subprocess.run(
            [BINARY, "import", "--dry-run", with_password],
            env={"DATABASE_URL": own_server.database_url, "PATH": "/usr/bin",
                 "LOG_FORMAT": "json"}, capture_output=True, text=True)
    assert done.returncode != 0
    assert "has no batch_history table" in done.stderr, done.stderr
    assert "hunter2" not in done.stderr + done.stdout
