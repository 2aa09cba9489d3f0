"""What a failed call raises: one exception per `ErrorInfo.reason`.

The service attaches a `google.rpc.ErrorInfo` to every failed call; the
class is chosen by its `reason`, never by the message's words. Every class
is a `grpc.RpcError` with `code()` and `details()`, so code that caught
`grpc.RpcError` keeps working.
"""
from __future__ import annotations

from typing import Dict, Optional

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "BatchHistoryError", "InvalidArgument", "BatchNotFound", "BatchIdTaken", "RequestIdReused",
    "BatchAlreadyFinished", "BatchRunning", "Retryable", "DatabaseUnavailable",
    "OutcomeUnknown", "WatchEnded", "Unauthenticated", "from_rpc_error",
]

ERROR_DOMAIN = "batch-history"


class BatchHistoryError(grpc.RpcError):
    """A call the service refused or could not carry out. `reason` is
    `ErrorInfo.reason` ("" if the answer carried none: it did not come from
    the service), `metadata` its metadata (`batch_id`, `state`, `field`, …)."""

    def __init__(self, error: grpc.RpcError, reason: str, metadata: Dict[str, str]):
        # grpc.RpcError promises no methods; a call's error has them all.
        self._code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        self._details = error.details() if hasattr(error, "details") else str(error)
        self._trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else ()
        super().__init__(self._details)
        self.reason = reason
        self.metadata = metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> Optional[str]:
        return self._details

    def trailing_metadata(self):
        return self._trailing

    @property
    def batch_id(self) -> Optional[str]:
        return self.metadata.get("batch_id")

    def __str__(self) -> str:
        return f"{self.code().name} {self.reason}: {self.details()}"


class InvalidArgument(BatchHistoryError):
    """FIELD_INVALID: `metadata['field']` names the field."""


class BatchNotFound(BatchHistoryError):
    """BATCH_NOT_FOUND."""


class BatchIdTaken(BatchHistoryError):
    """BATCH_ID_TAKEN: a different batch already has the id."""


class RequestIdReused(BatchHistoryError):
    """REQUEST_ID_REUSED: the request id was used for another report."""


class BatchAlreadyFinished(BatchHistoryError):
    """BATCH_ALREADY_FINISHED: `metadata['state']` is the state it ended in."""

    @property
    def state(self) -> Optional[str]:
        return self.metadata.get("state")


class BatchRunning(BatchHistoryError):
    """BATCH_RUNNING: a delete of a running batch without `force`."""


class Retryable(BatchHistoryError):
    """A call worth repeating: BATCH_CONTENDED, DATABASE_RESOURCE_EXHAUSTED,
    SHUTTING_DOWN, DEADLINE_EXCEEDED."""


class DatabaseUnavailable(Retryable):
    """DATABASE_UNAVAILABLE or DATABASE_TIMEOUT: nothing was applied."""


class OutcomeUnknown(Retryable):
    """OUTCOME_UNKNOWN: the call may or may not have been applied; every
    call this client makes is safe to repeat."""


class WatchEnded(BatchHistoryError):
    """WATCHER_FELL_BEHIND or CHANGE_FEED_LOST: watch again."""


class Unauthenticated(BatchHistoryError):
    """UNAUTHENTICATED: the token is missing or wrong."""


_BY_REASON = {
    "FIELD_INVALID": InvalidArgument,
    "BATCH_NOT_FOUND": BatchNotFound,
    "BATCH_ID_TAKEN": BatchIdTaken,
    "REQUEST_ID_REUSED": RequestIdReused,
    "BATCH_ALREADY_FINISHED": BatchAlreadyFinished,
    "BATCH_RUNNING": BatchRunning,
    "BATCH_CONTENDED": Retryable,
    "DATABASE_RESOURCE_EXHAUSTED": Retryable,
    "SHUTTING_DOWN": Retryable,
    "DEADLINE_EXCEEDED": Retryable,
    "DATABASE_UNAVAILABLE": DatabaseUnavailable,
    "DATABASE_TIMEOUT": DatabaseUnavailable,
    "OUTCOME_UNKNOWN": OutcomeUnknown,
    "REQUEST_MALFORMED": InvalidArgument,
    "WATCHER_FELL_BEHIND": WatchEnded,
    "CHANGE_FEED_LOST": WatchEnded,
    "UNAUTHENTICATED": Unauthenticated,
}


def from_rpc_error(error: grpc.RpcError) -> BatchHistoryError:
    """The typed exception for a failed call's `error`. An answer without
    the service's ErrorInfo (a proxy's, or the transport's) is a plain
    `BatchHistoryError`, or `Retryable` when its code is UNAVAILABLE or
    DEADLINE_EXCEEDED."""
    if isinstance(error, BatchHistoryError):
        return error
    info = _error_info(error)
    if info is None:
        transient = getattr(error, "code", lambda: None)() in (
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return (Retryable if transient else BatchHistoryError)(error, "", {})
    kind = _BY_REASON.get(info.reason, BatchHistoryError)
    return kind(error, info.reason, dict(info.metadata))


def _error_info(error: grpc.RpcError) -> Optional[error_details_pb2.ErrorInfo]:
    try:
        status = rpc_status.from_call(error)
    except (AttributeError, ValueError):
        return None  # not a call's error, or its details disagree with it
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info
    return None
