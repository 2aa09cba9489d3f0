"""The legal dashboard's batch history, kept by the batch-history service.

`BatchHistory` replaces each function of the dashboard's `batch_service`
with one call of the same behaviour:

    from batch_history_client import BatchHistory
    history = BatchHistory("localhost:50051", timezone="Europe/London")
    history.save(batch_state)            # _save_batch_to_db(batch_state)
    history.stop(batch_id)               # stop_batch(batch_id), for a batch not in memory
    history.stop_all()                   # stop_all_batches()
    history.stuck(threshold_minutes=60)  # check_stuck_batches(...)
    history.get(batch_id)                # BatchHistory.query...first().to_dict(), or None
    history.history()                    # get_batch_history(): every row, newest first
    history.history_response()           # the route's {success, batches, count}

Rows come back exactly as the legacy `BatchHistory.to_dict()` shaped them:
times as naive local ISO text in `timezone`, `model` the current model,
NULL where the legacy table had NULL, and entry timestamps only where one
was recorded. Every call has a deadline and is retried, with backoff,
after UNAVAILABLE or DEADLINE_EXCEEDED; each is safe to repeat (saves are
absolute, see SaveBatch in the proto; progress reports carry a request id).
Other gRPC errors (grpc.RpcError) carry the service's status code. With
OpenTelemetry installed, calls carry the current trace context.
"""
from __future__ import annotations

import random
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, TypeVar
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from batchhistory.v1 import batch_history_pb2 as pb
from batchhistory.v1 import batch_history_pb2_grpc as pb_grpc

try:  # OpenTelemetry is optional: `pip install batch-history-client[otel]`.
    from opentelemetry.propagate import inject as _inject
except ImportError:
    _inject = None

__all__ = ["Batch", "BatchHistory", "LegacyRow"]

Batch = pb.Batch
LegacyRow = dict  # a dict shaped like the legacy BatchHistory.to_dict()

# Legacy status names, as the dashboard's templates and API expect them.
_STATUS = {
    Batch.RUNNING: "running",
    Batch.COMPLETED: "completed",
    Batch.STOPPED: "stopped",
    Batch.FAILED: "failed",
}
_STATE = {name: state for state, name in _STATUS.items()}

# Codes after which a call may not have reached the database, or its answer
# was lost: every call below is safe to send again.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

_Reply = TypeVar("_Reply", bound=Message)
_Entry = TypeVar("_Entry", pb.BatchError, pb.ModelSwitch)


class BatchHistory:
    """The batch history of one dashboard, in the service at `target`.

    `timezone` is the zone the dashboard's naive local times are in (its
    `datetime.now()`); by default this machine's."""

    def __init__(self, target: str, timeout: float = 5.0,
                 channel: Optional[grpc.Channel] = None, attempts: int = 4,
                 backoff: float = 0.1, timezone: Optional[str] = None) -> None:
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = pb_grpc.BatchHistoryStub(self._channel)
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._zone = ZoneInfo(timezone) if timezone else None

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., _Reply], request: Message) -> _Reply:
        """Sends `request`, the same message every time, until an answer that
        is not worth retrying or the last attempt."""
        metadata = _trace_context()
        for attempt in range(self._attempts):
            try:
                return method(request, timeout=self._timeout, metadata=metadata)
            except grpc.RpcError as error:
                if error.code() not in _RETRYABLE or attempt + 1 == self._attempts:
                    raise
            time.sleep(self._backoff * 2 ** attempt * random.uniform(0.5, 1.5))
        raise AssertionError("attempts must be at least 1")

    # The legacy batch_service, one call per function.

    def save(self, batch_state: Mapping[str, Any]) -> pb.Batch:
        """`_save_batch_to_db(batch_state)`: creates the batch if absent, with
        its own `started_at`, then sets its totals, errors, model switches
        and current model to the values given, and finishes it when its
        status is not running. Absolute, so a repeated or retried save never
        counts anything twice, and a late one never takes anything back."""
        batch_id = batch_state["id"]
        status = batch_state.get("status", "running")
        state = _STATE.get(status, Batch.COMPLETED)
        near = _instant_in_id(batch_id)
        start = self._instant(batch_state["started_at"], nearest_to=near)
        batch = Batch(
            batch_id=batch_id, state=state,
            provider=batch_state.get("provider") or "",
            model=batch_state.get("model") or batch_state.get("current_model") or "",
            current_model=batch_state.get("current_model") or "",
            topic_filter=batch_state.get("topic_filter") or "",
            difficulty_filter=batch_state.get("difficulty_filter") or "",
            reasoning_instruction=batch_state.get("reasoning_instruction") or "",
            target_count=batch_state.get("target") or 0,
            samples_generated=batch_state.get("samples_generated") or 0,
            total_tokens=batch_state.get("tokens_used") or 0,
            errors=[self._error(e, start) for e in batch_state.get("errors") or ()],
            model_switches=[self._switch(s, start)
                            for s in batch_state.get("model_switches") or ()])
        batch.start_time.CopyFrom(_timestamp(start))
        completed = batch_state.get("completed_at")
        if state != Batch.RUNNING and completed:
            batch.end_time.CopyFrom(_timestamp(self._instant(completed, not_before=start)))
        return self._call(self._stub.SaveBatch, pb.SaveBatchRequest(batch=batch))

    def stop(self, batch_id: str) -> dict:
        """`stop_batch(batch_id)` for a batch not in memory: stops it and
        returns `{'success': True, 'message': ...}`, or `{'success': False,
        'error': ...}` when no such batch exists (or it already finished in
        another state)."""
        request = pb.FinishBatchRequest(batch_id=batch_id, state=Batch.STOPPED)
        try:
            self._call(self._stub.FinishBatch, request)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return {"success": False, "error": f"Batch {batch_id} not found"}
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return {"success": False, "error": error.details()}
            raise
        return {"success": True, "message": f"Batch {batch_id} stopped"}

    def stop_all(self) -> dict:
        """`stop_all_batches()`: stops every running batch; returns
        `{'success': True, 'stopped': [ids], 'count': n}`."""
        stopped = []
        for batch in self._batches(states=[Batch.RUNNING], view=pb.BATCH_VIEW_BASIC):
            if self.stop(batch.batch_id)["success"]:
                stopped.append(batch.batch_id)
        return {"success": True, "stopped": stopped, "count": len(stopped)}

    def stuck(self, threshold_minutes: float = 60) -> list:
        """`check_stuck_batches(threshold_minutes)`: running batches that
        started more than the threshold ago, as legacy rows, newest first."""
        before = datetime.now(dt_timezone.utc) - timedelta(minutes=threshold_minutes)
        return [self._row(b) for b in self._batches(
            states=[Batch.RUNNING], started_before=_timestamp(before))]

    def get(self, batch_id: str) -> Optional[dict]:
        """One batch as a legacy row, or None if there is no such batch."""
        try:
            return self._row(self._call(self._stub.GetBatch, pb.GetBatchRequest(batch_id=batch_id)))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def history(self) -> list:
        """`get_batch_history()`: every batch, newest first, as legacy rows."""
        return [self._row(b) for b in self._batches()]

    def history_response(self) -> dict:
        """What the history route returned: `{success, batches, count}`."""
        batches = self.history()
        return {"success": True, "batches": batches, "count": len(batches)}

    # Finer-grained calls, for callers that report as they go.

    def start(self, provider: str = "", model: str = "", target: int = 0,
              topic_filter: Optional[str] = None, difficulty_filter: Optional[str] = None,
              reasoning_instruction: Optional[str] = None,
              metadata: Optional[Mapping[str, Any]] = None, batch_id: str = "") -> str:
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

    def progress(self, batch_id: str, samples: int = 0, tokens: int = 0,
                 errors: Iterable[Any] = (), model_switches: Iterable[Mapping[str, Any]] = ()
                 ) -> pb.Batch:
        """Adds samples and tokens; appends errors (legacy dicts, or strings)
        and model switches (legacy dicts, in either format). One request id
        per report, sent with every attempt."""
        request = pb.RecordProgressRequest(
            batch_id=batch_id, samples_delta=samples, tokens_delta=tokens,
            errors=[self._error(e) for e in errors],
            model_switches=[self._switch(s) for s in model_switches],
            request_id=str(uuid.uuid4()))
        return self._call(self._stub.RecordProgress, request)

    def finish(self, batch_id: str, state: int = Batch.COMPLETED,
               error: Any = None) -> pb.Batch:
        """Ends a batch: COMPLETED by default, STOPPED or FAILED. Repeating
        the same finish is harmless."""
        request = pb.FinishBatchRequest(batch_id=batch_id, state=state)
        if error is not None:
            request.error.CopyFrom(self._error(error))
        return self._call(self._stub.FinishBatch, request)

    # Mapping between legacy rows and the service's batches.

    def _batches(self, **filters: Any) -> Iterator[pb.Batch]:
        token = ""
        while True:
            page = self._call(self._stub.ListBatches, pb.ListBatchesRequest(
                page_size=1000, page_token=token, **filters))
            yield from page.batches
            token = page.next_page_token
            if not token:
                return

    def _row(self, batch: pb.Batch) -> dict:
        """A batch as the legacy BatchHistory.to_dict() shaped it."""
        return {
            "id": batch.batch_id,
            "started_at": self._local(batch.start_time),
            "completed_at": self._local(batch.end_time) if batch.HasField("end_time") else None,
            "model": batch.current_model or None,
            "topic_filter": batch.topic_filter or None,
            "difficulty_filter": batch.difficulty_filter or None,
            "reasoning_instruction": batch.reasoning_instruction or None,
            "target": batch.target_count,
            "samples_generated": batch.samples_generated,
            "tokens_used": batch.total_tokens,
            "status": _STATUS.get(batch.state, "unknown"),
            "errors": [self._legacy_error(e) for e in batch.errors],
            "model_switches": [self._legacy_switch(s) for s in batch.model_switches],
        }

    def _legacy_error(self, error: pb.BatchError) -> dict:
        entry = _plain(error.details)
        # A legacy "error" that was not a non-empty string stayed in details.
        if "error" not in entry and error.message:
            entry["error"] = error.message
        if error.HasField("time"):
            entry["timestamp"] = self._local(error.time)
        return entry

    def _legacy_switch(self, switch: pb.ModelSwitch) -> dict:
        # The dashboard's older format recorded a time; the current one does not.
        if switch.HasField("time"):
            entry = {"from_model": switch.from_model, "to_model": switch.to_model,
                     "provider": switch.provider, "reason": switch.reason,
                     "timestamp": self._local(switch.time),
                     "samples_generated": switch.at_sample}
        else:
            entry = {"from": switch.from_model, "to": switch.to_model,
                     "provider": switch.provider, "reason": switch.reason,
                     "at_sample": switch.at_sample}
        return {**_plain(switch.details), **entry}

    def _error(self, error: Any, start: Optional[datetime] = None) -> pb.BatchError:
        if isinstance(error, str):
            return pb.BatchError(message=error)
        fields = dict(error)
        message = fields.get("error")
        if isinstance(message, str) and message:
            del fields["error"]
        else:
            # Kept in details, as the importer keeps it; the service needs a message.
            message = "(no message)"
        return self._entry(pb.BatchError(message=message), fields, start)

    def _switch(self, switch: Mapping[str, Any],
                start: Optional[datetime] = None) -> pb.ModelSwitch:
        fields = dict(switch)
        pick = lambda *keys: next((fields.pop(k) for k in keys if k in fields), None)  # noqa: E731
        out = pb.ModelSwitch(
            from_model=pick("from", "from_model") or "", to_model=pick("to", "to_model") or "",
            provider=fields.pop("provider", "") or "", reason=fields.pop("reason", "") or "",
            at_sample=int(pick("at_sample", "samples_generated") or 0))
        return self._entry(out, fields, start)

    def _entry(self, out: _Entry, fields: dict, start: Optional[datetime]) -> _Entry:
        """Completes an error or switch entry: its `timestamp`, if any, is the
        time; the keys left are its details."""
        when = fields.pop("timestamp", None)
        if when:
            out.time.CopyFrom(_timestamp(self._instant(when, not_before=start)))
        if fields:
            out.details.update(fields)
        return out

    def _instant(self, value: Any, nearest_to: Optional[datetime] = None,
                 not_before: Optional[datetime] = None) -> datetime:
        """A legacy time as an aware instant. A naive one is local time in
        the dashboard's zone; in the hour the clocks go back it happened
        twice, and the candidate nearest to `nearest_to`, else the earliest
        not before `not_before`, is taken, as the importer does."""
        when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
        if when.tzinfo is not None:
            return when
        candidates = [when.replace(tzinfo=self._zone, fold=fold).astimezone(dt_timezone.utc)
                      for fold in (0, 1)]
        earlier, later = min(candidates), max(candidates)
        if nearest_to is not None:
            return min((earlier, later), key=lambda c: abs(c - nearest_to))
        if not_before is not None and earlier < not_before:
            return later
        return earlier

    def _local(self, ts: timestamp_pb2.Timestamp) -> str:
        """Naive local ISO text, as datetime.now().isoformat() wrote it."""
        instant = ts.ToDatetime(tzinfo=dt_timezone.utc)
        return instant.astimezone(self._zone).replace(tzinfo=None).isoformat()


def _trace_context() -> Optional[list]:
    """The current OpenTelemetry context as W3C `traceparent`/`tracestate`
    metadata, so that the service's spans join the caller's trace; `None`
    without OpenTelemetry or outside a span."""
    if _inject is None:
        return None
    carrier: dict = {}
    _inject(carrier)
    return list(carrier.items()) or None


def _instant_in_id(batch_id: str) -> Optional[datetime]:
    """The start instant in an id the dashboard made, batch_<unix seconds>_<hex>."""
    parts = batch_id.split("_")
    if len(parts) == 3 and parts[0] == "batch" and parts[1].isdigit():
        return datetime.fromtimestamp(int(parts[1]), dt_timezone.utc)
    return None


def _plain(details: Message) -> dict:
    """A Struct as the JSON it was made from: integral numbers are ints
    again (Struct keeps every number as a double)."""
    def restore(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
            return int(value)
        if isinstance(value, dict):
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value
    return restore(json_format.MessageToDict(details))


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(dt_timezone.utc))
    return ts
