"""A drop-in batch-history client for the legal dashboard's Flask backend.

    from batch_history_client import BatchHistory
    history = BatchHistory("localhost:50051")
    batch_id = history.start(provider="groq", model="llama-3.3-70b-versatile", target=100)
    history.progress(batch_id, samples=5, tokens=1200)
    history.finish(batch_id)                      # or history.stop(batch_id)
    history.history()                             # dicts shaped like BatchHistory.to_dict()

The generated stubs (batchhistory/v1/batch_history_pb2*.py) come from
proto/ with grpcio-tools; see README.md beside this file.
"""
import random
import secrets
import time
import uuid
from datetime import datetime, timezone

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from batchhistory.v1 import batch_history_pb2 as pb
from batchhistory.v1 import batch_history_pb2_grpc as pb_grpc

Batch = pb.Batch

# Legacy status names, as the dashboard's templates and API expect them.
_STATUS = {
    Batch.RUNNING: "running",
    Batch.COMPLETED: "completed",
    Batch.STOPPED: "stopped",
    Batch.FAILED: "failed",
}


# Codes after which a call may not have reached the database, or its answer
# was lost: every call below is safe to send again.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class BatchHistory:
    """Start, advance, finish and list batches. Every call has a deadline and
    is retried, with backoff, after UNAVAILABLE or DEADLINE_EXCEEDED; each is
    safe to repeat (progress reports carry a request_id, see the proto).
    Other gRPC errors (grpc.RpcError) carry the service's status code."""

    def __init__(self, target, timeout=5.0, channel=None, attempts=4, backoff=0.1):
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = pb_grpc.BatchHistoryStub(self._channel)
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff

    def _call(self, method, request):
        """Sends `request`, the same message every time, until an answer that
        is not worth retrying or the last attempt."""
        for attempt in range(self._attempts):
            try:
                return method(request, timeout=self._timeout)
            except grpc.RpcError as error:
                if error.code() not in _RETRYABLE or attempt + 1 == self._attempts:
                    raise
            time.sleep(self._backoff * 2 ** attempt * random.uniform(0.5, 1.5))

    def close(self):
        self._channel.close()

    def start(self, provider="", model="", target=0, topic_filter=None,
              difficulty_filter=None, reasoning_instruction=None, metadata=None,
              batch_id=""):
        """Creates a RUNNING batch and returns its id: `batch_id`, or a new
        one in the legacy form batch_<unix seconds>_<8 hex>, made here so
        that a retried create finds the batch the first attempt made."""
        batch_id = batch_id or f"batch_{int(time.time())}_{secrets.token_hex(4)}"
        batch = Batch(
            provider=provider, model=model, target_count=target or 0,
            topic_filter=topic_filter or "", difficulty_filter=difficulty_filter or "",
            reasoning_instruction=reasoning_instruction or "")
        if metadata:
            batch.metadata.update(metadata)
        created = self._call(
            self._stub.CreateBatch, pb.CreateBatchRequest(batch=batch, batch_id=batch_id))
        return created.batch_id

    def progress(self, batch_id, samples=0, tokens=0, errors=(), model_switches=()):
        """Adds samples and tokens; appends errors (legacy dicts with an
        "error" key, or strings) and model switches (legacy dicts with
        "from", "to", "provider", "reason", "at_sample")."""
        request = pb.RecordProgressRequest(
            batch_id=batch_id, samples_delta=samples, tokens_delta=tokens,
            errors=[_error(e) for e in errors],
            model_switches=[_switch(s) for s in model_switches],
            request_id=str(uuid.uuid4()))
        return self._call(self._stub.RecordProgress, request)

    def finish(self, batch_id, state=Batch.COMPLETED, error=None):
        """Ends a batch: COMPLETED by default, STOPPED or FAILED. Repeating
        the same finish is harmless."""
        request = pb.FinishBatchRequest(batch_id=batch_id, state=state)
        if error is not None:
            request.error.CopyFrom(_error(error))
        return self._call(self._stub.FinishBatch, request)

    def stop(self, batch_id, reason=None):
        """Stops a batch by hand, as the dashboard's stop button did."""
        return self.finish(batch_id, Batch.STOPPED, error=reason)

    def get(self, batch_id):
        return to_legacy_dict(
            self._call(self._stub.GetBatch, pb.GetBatchRequest(batch_id=batch_id)))

    def history(self, limit=50, states=(), provider=""):
        """Newest batches first, as legacy to_dict() dicts; follows page
        tokens until `limit` batches."""
        out, token = [], ""
        while len(out) < limit:
            page = self._call(self._stub.ListBatches, pb.ListBatchesRequest(
                page_size=min(limit - len(out), 1000), page_token=token,
                states=list(states), provider=provider))
            out.extend(to_legacy_dict(b) for b in page.batches)
            token = page.next_page_token
            if not token:
                break
        return out


def to_legacy_dict(batch):
    """A Batch as the legacy BatchHistory.to_dict() shaped it."""
    return {
        "id": batch.batch_id,
        "started_at": _iso(batch.start_time) if batch.HasField("start_time") else None,
        "completed_at": _iso(batch.end_time) if batch.HasField("end_time") else None,
        "model": batch.model,
        "topic_filter": batch.topic_filter or None,
        "difficulty_filter": batch.difficulty_filter or None,
        "reasoning_instruction": batch.reasoning_instruction or None,
        "target": batch.target_count,
        "samples_generated": batch.samples_generated,
        "tokens_used": batch.total_tokens,
        "status": _STATUS.get(batch.state, "unknown"),
        "errors": [dict(json_format.MessageToDict(e.details), error=e.message,
                        timestamp=_iso(e.time)) for e in batch.errors],
        "model_switches": [dict(json_format.MessageToDict(s.details), **{
            "from": s.from_model, "to": s.to_model, "provider": s.provider,
            "reason": s.reason, "at_sample": s.at_sample}) for s in batch.model_switches],
    }


def _iso(ts):
    return ts.ToDatetime(tzinfo=timezone.utc).isoformat()


def _error(error):
    if isinstance(error, str):
        return pb.BatchError(message=error)
    error = dict(error)
    message = str(error.pop("error", error.pop("message", "")))
    out = pb.BatchError(message=message)
    when = error.pop("timestamp", None)
    if when:
        out.time.CopyFrom(_timestamp(when))
    if error:
        out.details.update(error)
    return out


def _switch(switch):
    switch = dict(switch)
    out = pb.ModelSwitch(
        from_model=switch.pop("from", ""), to_model=switch.pop("to", ""),
        provider=switch.pop("provider", ""), reason=switch.pop("reason", ""),
        at_sample=int(switch.pop("at_sample", 0)))
    if switch:
        out.details.update(switch)
    return out


def _timestamp(value):
    ts = timestamp_pb2.Timestamp()
    if isinstance(value, datetime):
        ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=timezone.utc))
    else:
        ts.FromJsonString(value if value.endswith("Z") or "+" in value[10:] else value + "Z")
    return ts
