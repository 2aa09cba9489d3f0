"""The dashboard's client against a live server."""
import uuid

import grpc
import pytest

LEGACY_KEYS = {"id", "started_at", "completed_at", "model", "topic_filter", "difficulty_filter",
               "reasoning_instruction", "target", "samples_generated", "tokens_used", "status",
               "errors", "model_switches"}


def test_a_batch_from_start_to_finish_reads_like_the_legacy_history(history):
    batch_id = history.start(provider="groq", model="llama-3.3-70b-versatile", target=100,
                             topic_filter="Contract Law - Formation", metadata={"smart_mode": True})
    assert batch_id.startswith("batch_")
    history.progress(batch_id, samples=5, tokens=1200,
                     errors=[{"sample": 12, "error": "429 Too Many Requests",
                              "timestamp": "2025-10-18T14:03:22"}],
                     model_switches=[{"from": "llama-3.3-70b-versatile", "to": "qwen-3-32b",
                                      "provider": "cerebras", "reason": "model_unavailable",
                                      "at_sample": 5}])
    history.progress(batch_id, samples=3, tokens=800)
    history.finish(batch_id)

    row = history.get(batch_id)
    assert set(row) == LEGACY_KEYS
    assert row["id"] == batch_id
    assert row["status"] == "completed"
    assert (row["samples_generated"], row["tokens_used"], row["target"]) == (8, 2000, 100)
    assert row["model"] == "qwen-3-32b", "the current model, as the legacy row held"
    assert row["topic_filter"] == "Contract Law - Formation"
    assert row["difficulty_filter"] is None
    assert row["completed_at"] >= row["started_at"]
    assert row["errors"] == [{"sample": 12, "error": "429 Too Many Requests",
                              "timestamp": "2025-10-18T14:03:22"}]
    assert isinstance(row["errors"][0]["sample"], int)
    # Reported through RecordProgress, the switch got the receive time, so it
    # reads in the format that recorded one.
    switch = row["model_switches"][0]
    assert (switch["from_model"], switch["to_model"], switch["samples_generated"]) == (
        "llama-3.3-70b-versatile", "qwen-3-32b", 5)
    assert history.history()[0]["id"] == batch_id


def test_stop_and_retried_start(history):
    batch_id = f"dash-{uuid.uuid4().hex[:8]}"
    assert history.start(model="m", batch_id=batch_id) == batch_id
    assert history.start(model="m", batch_id=batch_id) == batch_id
    assert history.stop(batch_id) == {"success": True, "stopped_batches": [batch_id],
                                      "count": 1}
    assert history.stop(batch_id) == {
        "success": False, "error": f"Batch {batch_id} not found or already stopped"}
    assert history.get(batch_id)["status"] == "stopped"
    assert history.stop("no-such-batch") == {
        "success": False, "error": "Batch no-such-batch not found or already stopped"}
    history.finish(done := history.start(model="m"))
    assert history.stop(done)["success"] is False
    assert history.get(done)["status"] == "completed", "a finished batch stays as it ended"


def test_service_errors_surface_as_grpc_status_codes(history):
    assert history.get("no-such-batch") is None
    with pytest.raises(grpc.RpcError) as malformed:
        history.get("not a valid id!")
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    batch_id = history.start(model="m")
    with pytest.raises(grpc.RpcError) as negative:
        history.progress(batch_id, samples=-1)
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "samples_delta" in negative.value.details()
    history.finish(batch_id)
    with pytest.raises(grpc.RpcError) as finished:
        history.progress(batch_id, samples=1)
    assert finished.value.code() == grpc.StatusCode.FAILED_PRECONDITION


class _AnswerLost(grpc.RpcError):
    """What a caller sees when a call ran but its answer never came back."""

    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code


class _LoseFirstAnswers(grpc.UnaryUnaryClientInterceptor):
    """Lets each RecordProgress through to the server, then reports the first
    `lost` of them as failed, as a deadline or a dropped connection would."""

    def __init__(self, lost, code):
        self.lost, self.code, self.sent = lost, code, []

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        if details.method.endswith("/RecordProgress"):
            self.sent.append(request.request_id)
            outcome.result()
            if self.lost > 0:
                self.lost -= 1
                raise _AnswerLost(self.code)
        return outcome


@pytest.mark.parametrize("code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE])
def test_a_report_whose_answers_are_lost_is_retried_and_counted_once(server_addr, code):
    from batch_history_client import BatchHistory
    lose = _LoseFirstAnswers(lost=2, code=code)
    channel = grpc.intercept_channel(grpc.insecure_channel(server_addr), lose)
    client = BatchHistory(server_addr, channel=channel, backoff=0.01)
    try:
        batch_id = client.start(model="m")
        batch = client.progress(batch_id, samples=5, tokens=100)
        client.progress(batch_id, samples=1)
        assert (batch.samples_generated, batch.total_tokens) == (5, 100)
        row = client.get(batch_id)
        assert (row["samples_generated"], row["tokens_used"]) == (6, 100)
        assert len(lose.sent) == 4 and len(set(lose.sent)) == 2, "one request id per report"
    finally:
        client.close()


def test_batches_filled_to_every_limit_are_read_and_listed_by_a_default_channel(history):
    """grpcio accepts 4 MiB responses by default; no batch or page may pass it."""
    ids = []
    for _ in range(3):
        batch_id = history.start(model="m", reasoning_instruction="r" * 65536,
                                 metadata={"blob": "d" * 60000})
        for _ in range(4):
            history.progress(
                batch_id,
                errors=[{"error": "m" * 65536, "blob": "d" * 60000} for _ in range(24)],
                model_switches=[{"from": "a", "to": "b", "reason": "s" * 1024,
                                 "blob": "d" * 2048} for _ in range(200)])
        ids.append(batch_id)
    full = history.get(ids[0])
    assert 0 < len(full["errors"]) < 96 and 0 < len(full["model_switches"]) < 800
    listed = [row["id"] for row in history.history()]
    assert set(ids) <= set(listed)
