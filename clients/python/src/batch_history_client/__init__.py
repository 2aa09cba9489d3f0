"""The legal dashboard's batch history, kept by the batch-history service.

`BatchHistory` replaces what the dashboard's `BatchService` did with its
`BatchHistory` model, method for method, with the same arguments and the
same answers:

    from batch_history_client import BatchHistory
    history = BatchHistory()             # BATCH_HISTORY_ADDR, AUTH_TOKEN, TLS from the environment
    history.save(batch_state)            # _save_batch_to_db(batch_state): never blocks, never raises
    history.stop(batch_id, self.active_batches)       # stop_batch(batch_id)
    history.stop_all(self.active_batches)             # stop_all_batches()
    history.stuck(60, self.active_batches)            # check_stuck_batches()
    history.history(self.active_batches, self.batch_lock)  # get_batch_history()

`save` takes the worker's in-memory state as the dashboard keeps it
(`batch_id`, `running`, `total`, `total_tokens`, `current_model`, ...; the
older `id`/`status`/`target`/`tokens_used` shape too), queues its newest
state and returns at once: one thread delivers saves, oldest waiting batch
first, and keeps the newest state of each batch while the service is down
(`save_stats`, and a log line on logger `batch_history_client` when an outage
starts and ends). When the service answers that a batch saved as running
was finished elsewhere (stopped from another dashboard, the web page or
grpcurl), the client sets that state's `running` to False, which the
worker's loop checks.

Rows come back exactly as the legacy `BatchHistory.to_dict()` shaped them:
times as naive local ISO text in `timezone`, `model` the current model,
NULL where the legacy table had NULL, and entry timestamps only where one
was recorded. Other calls have a deadline and are retried, with backoff,
after UNAVAILABLE or DEADLINE_EXCEEDED; each is safe to repeat. Errors
other than those the legacy functions answered with `{'success': False}`
raise one of `batch_history_client.errors` (`BatchNotFound`,
`BatchAlreadyFinished`, …), chosen by the reason the service attaches; each
is a `grpc.RpcError`, as a failing database query raised before. With
OpenTelemetry installed, calls carry the current trace context.
"""
from __future__ import annotations

import contextlib
import os
import random
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import (Any, Callable, ContextManager, Iterable, Iterator, Mapping, MutableMapping,
                    Optional, TypeVar, Union)
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from batchhistory.v1 import batch_history_pb2 as pb
from batchhistory.v1 import batch_history_pb2_grpc as pb_grpc

from ._outbox import Outbox, SaveStats, log
from .errors import (BatchAlreadyFinished, BatchHistoryError, BatchNotFound, Retryable,
                     from_rpc_error)

try:  # OpenTelemetry is optional: `pip install batch-history-client[otel]`.
    from opentelemetry.propagate import inject as _inject
except ImportError:
    _inject = None

__all__ = ["Batch", "BatchHistory", "BatchHistoryError", "LegacyRow", "SaveStats",
           "__version__"]
__version__ = "1.2.0"

Batch = pb.Batch
LegacyRow = dict  # a dict shaped like the legacy BatchHistory.to_dict()
ActiveBatches = MutableMapping[str, MutableMapping[str, Any]]

# Legacy status names, as the dashboard's templates and API expect them.
_STATUS = {
    Batch.RUNNING: "running",
    Batch.COMPLETED: "completed",
    Batch.STOPPED: "stopped",
    Batch.FAILED: "failed",
}
_STATE = {name: state for state, name in _STATUS.items()}

# The legacy worker's one error that ends a batch for good without a crash.
_EXHAUSTED = "All providers and models exhausted"
# Keeps an entry within the service's 64 KiB limits (a traceback can be long).
_MAX_TEXT = 16_384
_EPOCH = datetime(1970, 1, 1)
_QUARTER_HOUR = 900
# The legacy check_stuck_batches stopped anything running this long.
_STUCK_ALWAYS_MINUTES = 120

_Reply = TypeVar("_Reply", bound=Message)
_Entry = TypeVar("_Entry", pb.BatchError, pb.ModelSwitch)
_Pem = Union[bytes, str, os.PathLike, None]


class BatchHistory:
    """The batch history of one dashboard, in the service at `target`.

    Arguments left out are read from the environment the service documents:
    `target` from `BATCH_HISTORY_ADDR` (default `localhost:50051`), `token`
    from `AUTH_TOKEN` or the file `AUTH_TOKEN_FILE` (sent as `authorization:
    Bearer`), and TLS from `HEALTHCHECK_TLS_CA_FILE` (the roots: TLS is on
    when set), `HEALTHCHECK_TLS_CERT_FILE` and `HEALTHCHECK_TLS_KEY_FILE` (a
    client certificate, for mutual TLS) and `HEALTHCHECK_TLS_SERVER_NAME`.
    PEM arguments are bytes or a path. `timezone` is the zone the
    dashboard's naive local times are in (its `datetime.now()`); by default
    this machine's. `max_pending` bounds the batches whose saves wait for
    the service."""

    def __init__(self, target: Optional[str] = None, timeout: float = 5.0,
                 channel: Optional[grpc.Channel] = None, attempts: int = 4,
                 backoff: float = 0.1, timezone: Optional[str] = None, *,
                 token: Optional[str] = None, root_certificates: _Pem = None,
                 certificate_chain: _Pem = None, private_key: _Pem = None,
                 server_name: Optional[str] = None, max_pending: int = 10_000) -> None:
        target = target or os.environ.get("BATCH_HISTORY_ADDR") or "localhost:50051"
        self._channel = channel or _channel(
            target, _pem(root_certificates, "HEALTHCHECK_TLS_CA_FILE"),
            _pem(certificate_chain, "HEALTHCHECK_TLS_CERT_FILE"),
            _pem(private_key, "HEALTHCHECK_TLS_KEY_FILE"),
            server_name or os.environ.get("HEALTHCHECK_TLS_SERVER_NAME"))
        self._stub = pb_grpc.BatchHistoryStub(self._channel)
        token = token if token is not None else _env_token()
        self._auth = [("authorization", f"Bearer {token}")] if token else []
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._zone = ZoneInfo(timezone) if timezone else None
        self._offsets: dict = {}
        self._outbox = Outbox(self._send_save, max_pending=max_pending)

    def close(self, timeout: Optional[float] = 5.0) -> bool:
        """Delivers the waiting saves (for up to `timeout` seconds), then
        closes the channel; False if some saves were left undelivered."""
        delivered = self._outbox.close(timeout)
        self._channel.close()
        return delivered

    def __enter__(self) -> "BatchHistory":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until every save made so far has reached the service."""
        return self._outbox.flush(timeout)

    @property
    def save_stats(self) -> SaveStats:
        """Counters of the saves: pending, delivered, retries, rejected,
        dropped, stops relayed to workers, outages."""
        return self._outbox.stats

    def _metadata(self) -> Optional[list]:
        metadata = self._auth + _trace_context()
        return metadata or None

    def _call(self, method: Callable[..., _Reply], request: Message,
              metadata: Optional[list] = None, attempts: Optional[int] = None) -> _Reply:
        """Sends `request`, the same message every time, until an answer that
        is not worth retrying or the last attempt. Every call below is safe to
        send again, so a `Retryable` failure is retried."""
        metadata = metadata if metadata is not None else self._metadata()
        attempts = attempts or self._attempts
        for attempt in range(attempts):
            try:
                return method(request, timeout=self._timeout, metadata=metadata)
            except grpc.RpcError as error:
                typed = from_rpc_error(error)
                if not isinstance(typed, Retryable) or attempt + 1 == attempts:
                    raise typed from error
            time.sleep(self._backoff * 2 ** attempt * random.uniform(0.5, 1.5))
        raise AssertionError("attempts must be at least 1")

    def _send_save(self, request: pb.SaveBatchRequest, metadata: Optional[list]) -> pb.Batch:
        # One attempt: the outbox retries, and a newer save may replace this one.
        return self._call(self._stub.SaveBatch, request, metadata, attempts=1)

    # The legacy BatchService, one method per method.

    def save(self, batch_state: MutableMapping[str, Any]) -> None:
        """`_save_batch_to_db(batch_state)`: the batch as the worker holds it
        now. Creates it if absent (with its `started_at`, target, model,
        provider and filters), then sets its totals, errors, model switches
        and current model, and finishes it when it is no longer `running`:
        STOPPED, FAILED (its last error is a crash, a timeout or every
        provider exhausted) or COMPLETED (all `total` samples made), unless
        a `status` key says which. Returns at once; never raises."""
        try:
            request = self._save_request(batch_state)
        except Exception:  # noqa: BLE001 - a save never breaks the worker
            self._outbox.stats.rejected += 1
            log.exception(
                "batch %s: its state cannot be saved", batch_state.get("batch_id"))
            return
        if request is not None:
            self._outbox.put(request, self._metadata(), batch_state)

    def stop(self, batch_id: Optional[str] = None, active_batches: Optional[ActiveBatches] = None,
             lock: Optional[ContextManager] = None) -> dict:
        """`stop_batch(batch_id)`. A running batch in `active_batches` is
        marked stopped there and saved; one only in the service, still
        running, is stopped there. Without `batch_id`, every running batch in
        `active_batches` is stopped. Answers `{'success': True,
        'stopped_batches': [ids], 'count': n}` or `{'success': False,
        'error': ...}` in the legacy words. Pass `lock` (the dashboard's
        `batch_lock`) unless the caller holds it."""
        active = active_batches if active_batches is not None else {}
        stopped = []
        with lock or contextlib.nullcontext():
            if batch_id and batch_id in active:
                if active[batch_id].get("running"):
                    self._stop_in_memory(active[batch_id])
                    stopped.append(batch_id)
            elif batch_id:
                if not self._stop_in_service(batch_id):
                    return {"success": False,
                            "error": f"Batch {batch_id} not found or already stopped"}
                stopped.append(batch_id)
            else:
                for bid, state in active.items():
                    if state.get("running", False):
                        self._stop_in_memory(state)
                        stopped.append(bid)
        if stopped:
            return {"success": True, "stopped_batches": stopped, "count": len(stopped)}
        return {"success": False, "error": "Batch not found or already stopped"}

    def stop_all(self, active_batches: Optional[ActiveBatches] = None,
                 lock: Optional[ContextManager] = None) -> dict:
        """`stop_all_batches()`: the running batches in `active_batches`, or
        if there are none every batch the service holds as running."""
        active = active_batches if active_batches is not None else {}
        with lock or contextlib.nullcontext():
            running = [(bid, s) for bid, s in active.items() if s.get("running", False)]
            for _, state in running:
                self._stop_in_memory(state)
        if running:
            ids = [bid for bid, _ in running]
            return {"success": True, "message": f"Stopped {len(ids)} batch(es)",
                    "stopped_batch_ids": ids}
        stuck = [b.batch_id for b in self._batches(states=[Batch.RUNNING],
                                                   view=pb.BATCH_VIEW_BASIC)]
        if stuck:
            # A batch that finished meanwhile is no longer running: not stopped here.
            for batch_id in stuck:
                self._stop_in_service(batch_id)
            return {"success": True,
                    "message": f"Stopped {len(stuck)} stuck batch(es) from database"}
        return {"success": False, "error": "No batch generation running"}

    def stuck(self, threshold_minutes: float = 60,
              active_batches: Optional[ActiveBatches] = None,
              lock: Optional[ContextManager] = None) -> dict:
        """`check_stuck_batches()`: of the batches running in the service and
        in `active_batches`, those past `threshold_minutes` with no sample,
        or past 120 minutes, are stopped (with an error saying so) and
        reported in the legacy shape."""
        active = active_batches if active_batches is not None else {}
        now = datetime.now(dt_timezone.utc)
        found = []
        for batch in self._batches(states=[Batch.RUNNING], view=pb.BATCH_VIEW_BASIC):
            if batch.batch_id not in active:
                continue  # running elsewhere, or its worker is gone: not ours to judge
            minutes = (now - batch.start_time.ToDatetime(tzinfo=dt_timezone.utc)
                       ).total_seconds() / 60
            if ((minutes > threshold_minutes and batch.samples_generated == 0)
                    or minutes > _STUCK_ALWAYS_MINUTES):
                found.append({
                    "batch_id": batch.batch_id, "started_at": self._local(batch.start_time),
                    "elapsed_minutes": round(minutes, 1),
                    "samples_generated": batch.samples_generated,
                    "target": batch.target_count, "model": batch.current_model or None})
        with lock or contextlib.nullcontext():
            for info in found:
                state = active[info["batch_id"]]
                state.setdefault("errors", []).append({
                    "error": f"Automatically stopped: stuck for {info['elapsed_minutes']} minutes",
                    "auto_stopped": True})
                self._stop_in_memory(state)
        return {"success": True, "stuck_batches": found, "stopped_batches": list(found),
                "count": len(found), "stopped_count": len(found),
                "threshold_minutes": threshold_minutes,
                "message": (f"Automatically stopped {len(found)} stuck batch(es)" if found
                            else "No stuck batches found")}

    def history(self, active_batches: Optional[ActiveBatches] = None,
                lock: Optional[ContextManager] = None) -> list:
        """`get_batch_history()`: every batch, newest first, as `to_dict()`
        rows, with the live state of the running batches in `active_batches`
        merged in (and those not yet in the service first)."""
        rows = [self._row(b) for b in self._batches()]
        if not active_batches:
            return rows
        with lock or contextlib.nullcontext():
            by_id = {row["id"]: row for row in rows}
            for batch_id, state in active_batches.items():
                if not state.get("running"):
                    continue
                live = {
                    "samples_generated": state.get("samples_generated", 0),
                    "tokens_used": state.get("total_tokens", 0), "status": "running",
                    "errors": state.get("errors", []),
                    "model_switches": state.get("model_switches", []),
                    "model": state.get("current_model"),
                    "provider": state.get("current_provider"),
                    "progress": state.get("progress", 0),
                    "current_sample": state.get("current_sample")}
                row = by_id.get(batch_id)
                if row is not None:
                    row.update(live, provider_switches=state.get("provider_switches", []))
                    continue
                rows.insert(0, {
                    "id": batch_id, "started_at": state["started_at"], "completed_at": None,
                    "model": live["model"], "provider": live["provider"],
                    "topic_filter": state.get("topic_filter"),
                    "difficulty_filter": state.get("difficulty_filter"),
                    "target": state.get("total", 0), **live})
        return rows

    def history_response(self, active_batches: Optional[ActiveBatches] = None,
                         lock: Optional[ContextManager] = None) -> dict:
        """What the history route answers: `{success, batches, count}`."""
        batches = self.history(active_batches, lock)
        return {"success": True, "batches": batches, "count": len(batches)}

    def get(self, batch_id: str) -> Optional[dict]:
        """One batch as a legacy row, or None if there is no such batch."""
        try:
            return self._row(self._call(self._stub.GetBatch, pb.GetBatchRequest(batch_id=batch_id)))
        except BatchNotFound:
            return None

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

    # Stopping.

    def _stop_in_memory(self, state: MutableMapping[str, Any]) -> None:
        """What the legacy stop did to a worker's state, then its save; the
        `status` key makes the save a stop whatever the totals say."""
        state["running"] = False
        state["completed_at"] = self._now_local().isoformat()
        state["status"] = "stopped"
        self.save(state)

    def _stop_in_service(self, batch_id: str) -> bool:
        """Stops a batch the service holds as running; False if it holds no
        such batch, or holds it finished."""
        try:
            found = self._call(self._stub.GetBatch, pb.GetBatchRequest(batch_id=batch_id))
            if found.state != Batch.RUNNING:
                return False
            self._call(self._stub.FinishBatch,
                       pb.FinishBatchRequest(batch_id=batch_id, state=Batch.STOPPED))
        except (BatchNotFound, BatchAlreadyFinished):
            return False
        return True

    # Mapping between the dashboard's states and rows and the service's batches.

    def _save_request(self, state: Mapping[str, Any]) -> Optional[pb.SaveBatchRequest]:
        batch_id = state.get("batch_id") or state.get("id")
        if not batch_id:
            return None  # as the legacy save: nothing to save under
        outcome = _outcome(state)
        near = _instant_in_id(batch_id)
        start = self._instant(state["started_at"], nearest_to=near)
        current_model = state.get("current_model") or state.get("model") or ""
        metadata = {key: state[key] for key in ("sample_type_filter", "smart_mode")
                    if state.get(key) is not None}
        batch = Batch(
            batch_id=batch_id, state=outcome,
            provider=state.get("current_provider") or state.get("provider") or "",
            model=state.get("model") or current_model, current_model=current_model,
            topic_filter=state.get("topic_filter") or "",
            difficulty_filter=state.get("difficulty_filter") or "",
            reasoning_instruction=state.get("reasoning_instruction") or "",
            target_count=_first(state, "total", "target") or 0,
            samples_generated=state.get("samples_generated") or 0,
            total_tokens=_first(state, "total_tokens", "tokens_used") or 0,
            errors=[self._error(e, start) for e in state.get("errors") or ()],
            model_switches=[self._switch(s, start) for s in state.get("model_switches") or ()])
        if metadata:
            batch.metadata.update(metadata)
        batch.start_time.CopyFrom(_timestamp(start))
        completed = state.get("completed_at")
        if outcome != Batch.RUNNING and completed:
            # A clock set back while the batch ran must not cost its last save.
            end = max(start, self._instant(completed, not_before=start))
            batch.end_time.CopyFrom(_timestamp(end))
        return pb.SaveBatchRequest(batch=batch)

    def _batches(self, **filters: Any) -> Iterator[pb.Batch]:
        """Every batch matching `filters`, a page at a time; the next page is
        on its way while the caller works through this one."""
        def page_after(token: str) -> pb.ListBatchesRequest:
            return pb.ListBatchesRequest(page_size=1000, page_token=token, **filters)
        metadata = self._metadata()
        page = self._call(self._stub.ListBatches, page_after(""), metadata)
        while True:
            token = page.next_page_token
            ahead = token and self._stub.ListBatches.future(
                page_after(token), timeout=self._timeout, metadata=metadata)
            yield from page.batches
            if not ahead:
                return
            try:
                page = ahead.result()
            except grpc.RpcError as error:
                typed = from_rpc_error(error)
                if not isinstance(typed, Retryable):
                    raise typed from error
                page = self._call(self._stub.ListBatches, page_after(token), metadata)

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
            return pb.BatchError(message=_bounded(error))
        fields = {key: _bounded(value) for key, value in dict(error).items()}
        message = fields.get("error")
        if isinstance(message, str) and message:
            del fields["error"]
        else:
            # Kept in details, as the importer keeps it; the service needs a message.
            message = "(no message)"
        return self._entry(pb.BatchError(message=message), fields, start)

    def _switch(self, switch: Mapping[str, Any],
                start: Optional[datetime] = None) -> pb.ModelSwitch:
        fields = {key: _bounded(value) for key, value in dict(switch).items()}
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

    def _now_local(self) -> datetime:
        """`datetime.now()` as the dashboard in `timezone` reads it."""
        return datetime.now(self._zone).replace(tzinfo=None)

    def _local(self, ts: timestamp_pb2.Timestamp) -> str:
        """Naive local ISO text, as datetime.now().isoformat() wrote it."""
        seconds = ts.seconds
        offset = self._offsets.get(seconds // _QUARTER_HOUR)
        if offset is None:
            offset = self._offset(seconds)
        return (_EPOCH + timedelta(seconds=seconds + offset,
                                   microseconds=ts.nanos // 1000)).isoformat()

    def _offset(self, seconds: int) -> int:
        """The zone's UTC offset at `seconds`, remembered for its quarter
        hour when it holds for all of it (offsets change on quarter hours,
        months apart): a history reads thousands of times, in few offsets."""
        def at(instant: int) -> int:
            if self._zone is None:
                return time.localtime(instant).tm_gmtoff
            return int(datetime.fromtimestamp(instant, self._zone).utcoffset().total_seconds())
        bucket = seconds // _QUARTER_HOUR
        first, last = at(bucket * _QUARTER_HOUR), at(bucket * _QUARTER_HOUR + _QUARTER_HOUR - 1)
        if first == last:
            self._offsets[bucket] = first
            return first
        return at(seconds)


def _outcome(state: Mapping[str, Any]) -> int:
    """The state a save records. `running` (or, in the older shape,
    `status`) says whether the batch runs; a finished one's ending is read
    from the worker's own marks, as the legacy table could not record it."""
    running = state["running"] if "running" in state else state.get("status", "running") == "running"
    if running:
        return Batch.RUNNING
    status = state.get("status")
    if status in _STATE:
        return _STATE[status]
    if "running" not in state:
        return Batch.COMPLETED  # the older shape: any status but running was an ending
    errors = state.get("errors") or ()
    last = errors[-1] if errors and isinstance(errors[-1], Mapping) else {}
    if last.get("traceback") or last.get("timeout") or last.get("error") == _EXHAUSTED:
        return Batch.FAILED
    if last.get("auto_stopped"):
        return Batch.STOPPED
    total = _first(state, "total", "target") or 0
    if (state.get("samples_generated") or 0) >= total:
        return Batch.COMPLETED
    return Batch.STOPPED


def _first(state: Mapping[str, Any], *keys: str) -> Any:
    return next((state[key] for key in keys if key in state), None)


def _bounded(value: Any) -> Any:
    """Text longer than the service keeps in an entry (a long traceback),
    cut with a mark that says so; anything else as it is."""
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[:_MAX_TEXT] + f"... [{len(value) - _MAX_TEXT} characters cut]"
    return value


# gRPC's default reconnect backoff grows to 120 s: after an outage the
# waiting saves would sit idle long after the service is back.
_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
              ("grpc.max_reconnect_backoff_ms", 500)]


def _channel(target: str, root: Optional[bytes], chain: Optional[bytes],
             key: Optional[bytes], server_name: Optional[str]) -> grpc.Channel:
    if root is None and chain is None:
        return grpc.insecure_channel(target, options=_RECONNECT)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, credentials, options=_RECONNECT + options)


def _pem(value: _Pem, variable: str) -> Optional[bytes]:
    if value is None:
        value = os.environ.get(variable) or None
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as file:
        return file.read()


def _env_token() -> Optional[str]:
    token = os.environ.get("AUTH_TOKEN")
    path = os.environ.get("AUTH_TOKEN_FILE")
    if not token and path:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    return token or None


def _trace_context() -> list:
    """The current OpenTelemetry context as W3C `traceparent`/`tracestate`
    metadata, so that the service's spans join the caller's trace; empty
    without OpenTelemetry or outside a span."""
    if _inject is None:
        return []
    carrier: dict = {}
    _inject(carrier)
    return list(carrier.items())


def _instant_in_id(batch_id: str) -> Optional[datetime]:
    """The start instant in an id the dashboard made, batch_<unix seconds>_<hex>."""
    parts = batch_id.split("_")
    if len(parts) == 3 and parts[0] == "batch" and parts[1].isdigit():
        return datetime.fromtimestamp(int(parts[1]), dt_timezone.utc)
    return None


def _plain(details: struct_pb2.Struct) -> dict:
    """A Struct as the JSON it was made from: integral numbers are ints
    again (Struct keeps every number as a double)."""
    fields = details.fields
    # Keys then lookups: a third of the cost of the map's items() view.
    return {key: _plain_value(fields[key]) for key in fields}


def _plain_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) < 2 ** 53:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _plain(value.struct_value)
    if kind == "list_value":
        return [_plain_value(item) for item in value.list_value.values]
    return None


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(dt_timezone.utc))
    return ts
