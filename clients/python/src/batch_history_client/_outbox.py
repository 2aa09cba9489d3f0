"""Saves on their way to the service, kept until it has them.

The dashboard saves while holding its `batch_lock`, from the worker that
generates samples: a save must neither wait for the service nor fail. So
`save()` only hands the newest state of its batch to the outbox and
returns; one thread delivers. Saves are absolute, so a newer save of a
batch replaces one still waiting, and memory stays bounded by the number
of batches, not of saves.
"""
from __future__ import annotations

import atexit
import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, MutableMapping, Optional

import grpc

from batchhistory.v1 import batch_history_pb2 as pb

from .errors import Retryable, from_rpc_error

log = logging.getLogger("batch_history_client")


# How long an exiting process waits for saves still on their way.
_EXIT_WAIT = 5.0


@dataclass
class _Pending:
    request: pb.SaveBatchRequest
    metadata: Optional[list]
    # The worker's live state: told to stop when the service says the batch
    # was finished elsewhere.
    live: Optional[MutableMapping[str, Any]]
    version: int


@dataclass
class SaveStats:
    """What the outbox has done since the client was made."""
    pending: int = 0
    delivered: int = 0
    #: Deliveries that failed transiently and were tried again.
    retries: int = 0
    #: Saves the service refused (invalid); logged, not retried.
    rejected: int = 0
    #: Saves dropped because `max_pending` other batches were waiting.
    dropped: int = 0
    #: Workers told to stop because their batch was finished elsewhere.
    stops_relayed: int = 0
    outages: int = 0
    last_error: Optional[str] = field(default=None, repr=False)


class Outbox:
    """The newest waiting save of each batch, and the thread that delivers
    them, oldest waiting batch first."""

    def __init__(self, send: Callable[[pb.SaveBatchRequest, Optional[list]], pb.Batch],
                 max_pending: int = 10_000, max_backoff: float = 0.5) -> None:
        self._send = send
        self._max_pending = max_pending
        self._max_backoff = max_backoff
        self._waiting: "OrderedDict[str, _Pending]" = OrderedDict()
        self._changed = threading.Condition()
        self._sending: Optional[str] = None
        self._versions = 0
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self.stats = SaveStats()

    def put(self, request: pb.SaveBatchRequest, metadata: Optional[list],
            live: Optional[MutableMapping[str, Any]]) -> None:
        batch_id = request.batch.batch_id
        with self._changed:
            if self._closed:
                log.error("batch %s: save after close() is not delivered", batch_id)
                self.stats.dropped += 1
                return
            self._versions += 1
            if batch_id not in self._waiting and len(self._waiting) >= self._max_pending:
                oldest, _ = self._waiting.popitem(last=False)
                self.stats.dropped += 1
                log.error("batch %s: its save was dropped, %d other batches are waiting "
                          "for the service", oldest, self._max_pending)
            pending = self._waiting.get(batch_id)
            if pending is None:
                self._waiting[batch_id] = _Pending(request, metadata, live, self._versions)
            else:
                pending.request, pending.metadata, pending.version = (
                    request, metadata, self._versions)
                pending.live = live if live is not None else pending.live
            self.stats.pending = len(self._waiting)
            if self._thread is None:
                # Started on first use, so a dashboard that forks its workers
                # after importing gets the thread in the process that saves.
                self._thread = threading.Thread(
                    target=self._deliver, name="batch-history-outbox", daemon=True)
                self._thread.start()
                # The thread is a daemon: at exit, what waits gets a last chance.
                atexit.register(self._deliver_at_exit)
            self._changed.notify_all()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until every save made so far has been delivered (or refused);
        False if `timeout` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._waiting or self._sending is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def close(self, timeout: Optional[float]) -> bool:
        delivered = self.flush(timeout)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if not delivered:
            log.error("closing with the saves of %d batches undelivered", len(self._waiting))
        return delivered

    def _deliver_at_exit(self) -> None:
        if not self.flush(_EXIT_WAIT):
            log.error("exiting with the saves of %d batches undelivered", len(self._waiting))

    def _deliver(self) -> None:
        backoff = 0.0
        outage_since: Optional[float] = None
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if not self._waiting:
                    return
                batch_id, pending = next(iter(self._waiting.items()))
                self._sending = batch_id
                request, metadata, live, version = (
                    pending.request, pending.metadata, pending.live, pending.version)
            try:
                answer = self._send(request, metadata)
            except grpc.RpcError as rpc_error:
                # A Retryable save may have been missed, or its answer lost;
                # sending the same absolute save again is always safe.
                error = from_rpc_error(rpc_error)
                transient = isinstance(error, Retryable)
                if transient and self._closed:
                    # close() gave up on what still waits, and said so.
                    self._finished_attempt(batch_id, version, delivered=False)
                    return
                if transient:
                    if outage_since is None:
                        outage_since = time.monotonic()
                        self.stats.outages += 1
                        log.warning("batch-history unreachable (%s: %s); keeping the newest "
                                    "state of each batch until it returns", error.code().name,
                                    error.details())
                    self.stats.retries += 1
                    self.stats.last_error = f"{error.code().name}: {error.details()}"
                    backoff = min(self._max_backoff, max(0.02, backoff * 2))
                    self._finished_attempt(batch_id, version, delivered=False)
                    time.sleep(backoff * random.uniform(0.5, 1.0))
                    continue
                self.stats.rejected += 1
                self.stats.last_error = f"{error.code().name} {error.reason}: {error.details()}"
                log.error("batch %s: the service refused its save (%s); not retried",
                          batch_id, error)
                self._finished_attempt(batch_id, version, delivered=True)
                continue
            except Exception:  # noqa: BLE001 - the thread must outlive any surprise
                log.exception("batch %s: its save could not be sent; not retried", batch_id)
                self.stats.rejected += 1
                self._finished_attempt(batch_id, version, delivered=True)
                continue
            backoff = 0.0
            if outage_since is not None:
                log.warning("batch-history reachable again after %.1f s; delivering %d "
                            "waiting saves", time.monotonic() - outage_since, len(self._waiting))
                outage_since = None
            self.stats.delivered += 1
            self._relay_stop(request, live, answer)
            self._finished_attempt(batch_id, version, delivered=True)

    def _finished_attempt(self, batch_id: str, version: int, delivered: bool) -> None:
        with self._changed:
            self._sending = None
            pending = self._waiting.get(batch_id)
            if delivered and pending is not None and pending.version == version:
                del self._waiting[batch_id]
            self.stats.pending = len(self._waiting)
            self._changed.notify_all()

    def _relay_stop(self, request: pb.SaveBatchRequest,
                    live: Optional[MutableMapping[str, Any]], answer: pb.Batch) -> None:
        """A batch saved as running that the service holds finished was
        stopped elsewhere (another dashboard, the web page, grpcurl, the stale
        sweep): its worker's loop ends at its next check of `running`."""
        if (live is not None and request.batch.state == pb.Batch.RUNNING
                and answer.state != pb.Batch.RUNNING and live.get("running")):
            live["running"] = False
            self.stats.stops_relayed += 1
            log.warning("batch %s was finished elsewhere (%s); its worker was told to stop",
                        answer.batch_id, pb.Batch.State.Name(answer.state))
