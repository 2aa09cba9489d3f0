"""The dashboard's worker through the client, against a real server that
goes away and comes back, and against stops made elsewhere."""
import logging
import subprocess
import sys
import threading
import time

from conftest import REPO, run_server, scratch_database, serve

sys.path.insert(0, str(REPO / "tests/legacy"))
import legacy_app  # noqa: E402
import worker  # noqa: E402


def client(addr, **options):
    from batch_history_client import BatchHistory
    return BatchHistory(addr, timezone="UTC", timeout=1.0, **options)


def state_of(batch_id, total=10_000):
    """A worker's state as start_batch makes it."""
    service = legacy_app.LegacyBatchService(connection=None)
    state = service.create_batch_state(batch_id, "groq", "llama-3.3-70b-versatile", total)
    state.update(topic_filter=None, difficulty_filter=None, reasoning_instruction=None,
                 sample_type_filter="balance", smart_mode=True)
    return state


def test_saves_during_an_outage_return_at_once_and_the_newest_lands_when_it_returns(caplog):
    caplog.set_level(logging.WARNING, logger="batch_history_client")
    batch_id = "batch_1764000000_0e7a9e01"
    with scratch_database() as url:
        with run_server(url) as addr:
            history = client(addr)
            state = state_of(batch_id)
            history.save(state)
            assert history.flush(5)
        # The service is down for 10 s; the worker goes on saving.
        slowest, saves = 0.0, 0
        down_until = time.monotonic() + 10
        while time.monotonic() < down_until:
            state["samples_generated"] += 10
            state["total_tokens"] += 12_000
            began = time.perf_counter()
            history.save(state)
            slowest = max(slowest, time.perf_counter() - began)
            saves += 1
            time.sleep(0.1)
        newest = state["samples_generated"]
        assert history.save_stats.pending == 1, "one batch waits, whatever its saves"
        with run_server(url, addr) as addr:
            back = time.monotonic()
            assert history.flush(10), history.save_stats
            landed = time.monotonic() - back
            reader = client(addr)
            row = reader.get(batch_id)
            reader.close()
        history.close()
    print(f"\n{saves} saves during a 10 s outage: slowest returned in {slowest * 1000:.2f} ms; "
          f"newest state stored {landed:.2f} s after the server answered health "
          f"({history.save_stats})")
    assert slowest < 0.05
    assert landed < 1.0
    assert row["samples_generated"] == newest and row["status"] == "running"
    assert history.save_stats.outages == 1 and history.save_stats.retries > 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("unreachable" in m for m in messages) and any("reachable again" in m
                                                             for m in messages)


def run_worker(history, state):
    """The worker's loop in a thread of its own, a sample every 5 ms."""
    steps = iter(lambda: ("sample", 1000), None)
    taken = {}

    def loop():
        taken["steps"] = worker.run(state, steps, history.save, threading.Lock(),
                                    between=lambda _: time.sleep(0.005))
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread, taken


def test_a_stop_from_grpcurl_or_another_dashboard_ends_the_running_worker():
    with serve() as server:
        history = client(server.addr)
        other_dashboard = client(server.addr)
        try:
            for stop_by in ("grpcurl", "another dashboard"):
                batch_id = f"batch_{int(time.time())}_{'a1b2c3d4' if stop_by == 'grpcurl' else 'd4c3b2a1'}"
                state = state_of(batch_id)
                history.save(state)
                assert history.flush(5)
                thread, taken = run_worker(history, state)
                time.sleep(0.5)
                assert thread.is_alive() and state["running"]
                if stop_by == "grpcurl":
                    subprocess.run(
                        ["grpcurl", "-plaintext", "-d",
                         f'{{"batch_id": "{batch_id}", "state": "STOPPED"}}', server.addr,
                         "batchhistory.v1.BatchHistory/FinishBatch"],
                        check=True, capture_output=True)
                else:
                    assert other_dashboard.stop(batch_id)["success"]
                stopped_at = time.monotonic()
                thread.join(5)
                assert not thread.is_alive(), f"the worker did not end after a stop by {stop_by}"
                ended_in = time.monotonic() - stopped_at
                assert state["running"] is False
                assert history.flush(5)
                row = history.get(batch_id)
                print(f"\nstopped by {stop_by}: the worker ended {ended_in:.3f} s later, "
                      f"after {taken['steps']} samples")
                assert row["status"] == "stopped"
                assert row["samples_generated"] == state["samples_generated"] < state["total"]
            assert history.save_stats.stops_relayed == 2
        finally:
            history.close()
            other_dashboard.close()
