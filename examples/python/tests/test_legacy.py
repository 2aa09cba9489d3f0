"""The client against the legacy dashboard's own behaviour: its history file,
imported, reads back exactly as its to_dict(); and each batch_service call
site, replaced by one client call, answers as the legacy function did."""
import json
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from conftest import BINARY, REPO, serve

sys.path.insert(0, str(REPO / "tests/legacy"))
import legacy_app  # noqa: E402

ZONE = "Europe/London"


@pytest.fixture(scope="module")
def own_server():
    """A server whose database holds only what these tests put there."""
    with serve() as server:
        yield server


def client(server, **options):
    from batch_history_client import BatchHistory
    return BatchHistory(server.addr, timezone=ZONE, backoff=0.01, **options)


def canonical(row):
    """A row as JSON text: tells 7200 from 7200.0, unlike ==."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


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

    history = client(own_server)
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


def _run(batch_id, started_at):
    """A batch as the dashboard's worker holds it, step by step: the states
    it passes to _save_batch_to_db."""
    state = {"id": batch_id, "started_at": started_at, "status": "running",
             "current_model": "llama-3.3-70b-versatile", "provider": "groq",
             "topic_filter": "Tort Law - Negligence", "difficulty_filter": None,
             "reasoning_instruction": None, "target": 50, "samples_generated": 0,
             "tokens_used": 0, "errors": [], "model_switches": [], "completed_at": None}
    yield dict(state)
    state.update(samples_generated=10, tokens_used=12000,
                 errors=[{"error": "Batch timed out after 120 minutes", "timeout": True,
                          "elapsed_seconds": 7200}])
    yield dict(state)
    state.update(samples_generated=25, tokens_used=30500, current_model="qwen-3-32b",
                 model_switches=[{"from": "llama-3.3-70b-versatile", "to": "qwen-3-32b",
                                  "provider": "cerebras", "reason": "rate_limited",
                                  "at_sample": 10}],
                 errors=state["errors"] + [{"error": "All providers and models exhausted",
                                            "provider_failures": {"groq": 3},
                                            "timestamp": "2025-10-26T01:20:00.500000"}])
    yield dict(state)
    state.update(status="completed", completed_at="2025-10-26T01:05:00")
    yield dict(state)


def test_each_save_replaces_one_legacy_save_and_replays_and_retries_count_once(own_server):
    lose = _LoseFirstSaveAnswer()
    channel = grpc.intercept_channel(grpc.insecure_channel(own_server.addr), lose)
    history = client(own_server, channel=channel)
    with tempfile.TemporaryDirectory() as scratch:
        legacy = legacy_app.LegacyDb(Path(scratch) / "batches.db")
        try:
            # Started at 01:40 BST, the first time round; ended at 01:05 GMT.
            batch_id = "batch_1761439200_5a4e0001"
            for state in _run(batch_id, "2025-10-26T01:40:00"):
                legacy._save_batch_to_db(state)
                history.save(state)
                history.save(state)  # replayed: nothing counts twice
                assert canonical(history.get(batch_id)) == canonical(legacy.get_batch(batch_id))
            # A late retry of an early save takes nothing back.
            history.save(next(_run(batch_id, "2025-10-26T01:40:00")))
            row = history.get(batch_id)
            assert canonical(row) == canonical(legacy.get_batch(batch_id))
            assert isinstance(row["errors"][0]["elapsed_seconds"], int)
            assert "timestamp" not in row["errors"][0], "no time invented"
            assert lose.lost and lose.saves == 4 * 2 + 1 + 1, "the lost answer was retried"
        finally:
            legacy.close()
            history.close()


def test_stop_stop_all_and_stuck_answer_as_the_legacy_functions(own_server):
    history = client(own_server)
    with tempfile.TemporaryDirectory() as scratch:
        legacy = legacy_app.LegacyDb(Path(scratch) / "batches.db")
        try:
            ids = [f"batch_{1750000000 + i}_c0ffee0{i}" for i in range(3)]
            for i, batch_id in enumerate(ids):
                state = next(_run(batch_id, datetime(2025, 6, 15, 16, 26, 40 + i).isoformat()))
                legacy._save_batch_to_db(state)
                history.save(state)
            legacy_stuck = legacy.check_stuck_batches(threshold_minutes=30)
            assert {r["id"] for r in legacy_stuck} <= {r["id"] for r in history.stuck(30)}
            assert set(ids) <= {r["id"] for r in history.stuck(30)}
            assert history.stop(ids[0]) == legacy.stop_batch(ids[0])
            assert history.stop("batch_1_00000000") == legacy.stop_batch("batch_1_00000000")
            assert history.get(ids[0])["status"] == legacy.get_batch(ids[0])["status"] == "stopped"
            ours, theirs = history.stop_all(), legacy.stop_all_batches()
            assert set(theirs["stopped"]) <= set(ours["stopped"])
            assert ours["success"] and ours["count"] == len(ours["stopped"])
            assert ids[0] not in ours["stopped"], "already stopped"
            assert history.stuck(30) == [] and legacy.check_stuck_batches(30) == []
        finally:
            legacy.close()
            history.close()
