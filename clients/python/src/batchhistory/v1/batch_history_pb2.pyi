import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BatchView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_VIEW_UNSPECIFIED: _ClassVar[BatchView]
    BATCH_VIEW_BASIC: _ClassVar[BatchView]
    BATCH_VIEW_FULL: _ClassVar[BatchView]
BATCH_VIEW_UNSPECIFIED: BatchView
BATCH_VIEW_BASIC: BatchView
BATCH_VIEW_FULL: BatchView

class Batch(_message.Message):
    __slots__ = ("batch_id", "state", "provider", "model", "topic_filter", "difficulty_filter", "reasoning_instruction", "target_count", "samples_generated", "total_tokens", "errors", "error_count", "model_switches", "metadata", "start_time", "end_time", "update_time", "etag", "current_model", "labels")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Batch.State]
        RUNNING: _ClassVar[Batch.State]
        COMPLETED: _ClassVar[Batch.State]
        STOPPED: _ClassVar[Batch.State]
        FAILED: _ClassVar[Batch.State]
    STATE_UNSPECIFIED: Batch.State
    RUNNING: Batch.State
    COMPLETED: Batch.State
    STOPPED: Batch.State
    FAILED: Batch.State
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FILTER_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FILTER_FIELD_NUMBER: _ClassVar[int]
    REASONING_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_GENERATED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    state: Batch.State
    provider: str
    model: str
    topic_filter: str
    difficulty_filter: str
    reasoning_instruction: str
    target_count: int
    samples_generated: int
    total_tokens: int
    errors: _containers.RepeatedCompositeFieldContainer[BatchError]
    error_count: int
    model_switches: _containers.RepeatedCompositeFieldContainer[ModelSwitch]
    metadata: _struct_pb2.Struct
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    current_model: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, batch_id: _Optional[str] = ..., state: _Optional[_Union[Batch.State, str]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., topic_filter: _Optional[str] = ..., difficulty_filter: _Optional[str] = ..., reasoning_instruction: _Optional[str] = ..., target_count: _Optional[int] = ..., samples_generated: _Optional[int] = ..., total_tokens: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[BatchError, _Mapping]]] = ..., error_count: _Optional[int] = ..., model_switches: _Optional[_Iterable[_Union[ModelSwitch, _Mapping]]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ..., current_model: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BatchError(_message.Message):
    __slots__ = ("message", "time", "details")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    message: str
    time: _timestamp_pb2.Timestamp
    details: _struct_pb2.Struct
    def __init__(self, message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ModelSwitch(_message.Message):
    __slots__ = ("from_model", "to_model", "provider", "reason", "at_sample", "time", "details")
    FROM_MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    from_model: str
    to_model: str
    provider: str
    reason: str
    at_sample: int
    time: _timestamp_pb2.Timestamp
    details: _struct_pb2.Struct
    def __init__(self, from_model: _Optional[str] = ..., to_model: _Optional[str] = ..., provider: _Optional[str] = ..., reason: _Optional[str] = ..., at_sample: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CreateBatchRequest(_message.Message):
    __slots__ = ("batch", "batch_id")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    batch_id: str
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class ListBatchesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "order", "states", "provider", "model", "started_after", "started_before", "topic_filter", "difficulty_filter", "labels", "view")
    class Order(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ORDER_UNSPECIFIED: _ClassVar[ListBatchesRequest.Order]
        START_TIME_DESC: _ClassVar[ListBatchesRequest.Order]
        START_TIME_ASC: _ClassVar[ListBatchesRequest.Order]
    ORDER_UNSPECIFIED: ListBatchesRequest.Order
    START_TIME_DESC: ListBatchesRequest.Order
    START_TIME_ASC: ListBatchesRequest.Order
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STARTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    STARTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FILTER_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FILTER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    order: ListBatchesRequest.Order
    states: _containers.RepeatedScalarFieldContainer[Batch.State]
    provider: str
    model: str
    started_after: _timestamp_pb2.Timestamp
    started_before: _timestamp_pb2.Timestamp
    topic_filter: str
    difficulty_filter: str
    labels: _containers.ScalarMap[str, str]
    view: BatchView
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order: _Optional[_Union[ListBatchesRequest.Order, str]] = ..., states: _Optional[_Iterable[_Union[Batch.State, str]]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., started_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., topic_filter: _Optional[str] = ..., difficulty_filter: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., view: _Optional[_Union[BatchView, str]] = ...) -> None: ...

class ListBatchesResponse(_message.Message):
    __slots__ = ("batches", "next_page_token")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    next_page_token: str
    def __init__(self, batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RecordProgressRequest(_message.Message):
    __slots__ = ("batch_id", "samples_delta", "tokens_delta", "errors", "model_switches", "request_id")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOKENS_DELTA_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    samples_delta: int
    tokens_delta: int
    errors: _containers.RepeatedCompositeFieldContainer[BatchError]
    model_switches: _containers.RepeatedCompositeFieldContainer[ModelSwitch]
    request_id: str
    def __init__(self, batch_id: _Optional[str] = ..., samples_delta: _Optional[int] = ..., tokens_delta: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[BatchError, _Mapping]]] = ..., model_switches: _Optional[_Iterable[_Union[ModelSwitch, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class FinishBatchRequest(_message.Message):
    __slots__ = ("batch_id", "state", "end_time", "error")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    state: Batch.State
    end_time: _timestamp_pb2.Timestamp
    error: BatchError
    def __init__(self, batch_id: _Optional[str] = ..., state: _Optional[_Union[Batch.State, str]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[BatchError, _Mapping]] = ...) -> None: ...

class DeleteBatchRequest(_message.Message):
    __slots__ = ("batch_id", "force")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    force: bool
    def __init__(self, batch_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class SaveBatchRequest(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class WatchBatchRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class WatchBatchesRequest(_message.Message):
    __slots__ = ("states", "provider", "model", "started_after", "started_before", "topic_filter", "difficulty_filter", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATES_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STARTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    STARTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FILTER_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FILTER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[Batch.State]
    provider: str
    model: str
    started_after: _timestamp_pb2.Timestamp
    started_before: _timestamp_pb2.Timestamp
    topic_filter: str
    difficulty_filter: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, states: _Optional[_Iterable[_Union[Batch.State, str]]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., started_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., topic_filter: _Optional[str] = ..., difficulty_filter: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BatchEvent(_message.Message):
    __slots__ = ("kind", "batch")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[BatchEvent.Kind]
        SNAPSHOT: _ClassVar[BatchEvent.Kind]
        CREATED: _ClassVar[BatchEvent.Kind]
        UPDATED: _ClassVar[BatchEvent.Kind]
        DELETED: _ClassVar[BatchEvent.Kind]
    KIND_UNSPECIFIED: BatchEvent.Kind
    SNAPSHOT: BatchEvent.Kind
    CREATED: BatchEvent.Kind
    UPDATED: BatchEvent.Kind
    DELETED: BatchEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    kind: BatchEvent.Kind
    batch: Batch
    def __init__(self, kind: _Optional[_Union[BatchEvent.Kind, str]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class GetBatchStatsRequest(_message.Message):
    __slots__ = ("states", "provider", "model", "started_after", "started_before", "topic_filter", "difficulty_filter", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATES_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STARTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    STARTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FILTER_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FILTER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[Batch.State]
    provider: str
    model: str
    started_after: _timestamp_pb2.Timestamp
    started_before: _timestamp_pb2.Timestamp
    topic_filter: str
    difficulty_filter: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, states: _Optional[_Iterable[_Union[Batch.State, str]]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., started_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., topic_filter: _Optional[str] = ..., difficulty_filter: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BatchStats(_message.Message):
    __slots__ = ("batch_count", "samples_generated", "total_tokens", "by_state", "by_model")
    BATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_GENERATED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BY_STATE_FIELD_NUMBER: _ClassVar[int]
    BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    batch_count: int
    samples_generated: int
    total_tokens: int
    by_state: _containers.RepeatedCompositeFieldContainer[StateCount]
    by_model: _containers.RepeatedCompositeFieldContainer[ModelStats]
    def __init__(self, batch_count: _Optional[int] = ..., samples_generated: _Optional[int] = ..., total_tokens: _Optional[int] = ..., by_state: _Optional[_Iterable[_Union[StateCount, _Mapping]]] = ..., by_model: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ...) -> None: ...

class StateCount(_message.Message):
    __slots__ = ("state", "batch_count")
    STATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    state: Batch.State
    batch_count: int
    def __init__(self, state: _Optional[_Union[Batch.State, str]] = ..., batch_count: _Optional[int] = ...) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("provider", "model", "batch_count", "samples_generated", "total_tokens")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_GENERATED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    batch_count: int
    samples_generated: int
    total_tokens: int
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., batch_count: _Optional[int] = ..., samples_generated: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class SweepStaleBatchesRequest(_message.Message):
    __slots__ = ("stale_after",)
    STALE_AFTER_FIELD_NUMBER: _ClassVar[int]
    stale_after: _duration_pb2.Duration
    def __init__(self, stale_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SweepStaleBatchesResponse(_message.Message):
    __slots__ = ("stopped", "stopped_count")
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_COUNT_FIELD_NUMBER: _ClassVar[int]
    stopped: _containers.RepeatedCompositeFieldContainer[Batch]
    stopped_count: int
    def __init__(self, stopped: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ..., stopped_count: _Optional[int] = ...) -> None: ...

class PurgeBatchesRequest(_message.Message):
    __slots__ = ("older_than", "states", "dry_run")
    OLDER_THAN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    older_than: _timestamp_pb2.Timestamp
    states: _containers.RepeatedScalarFieldContainer[Batch.State]
    dry_run: bool
    def __init__(self, older_than: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., states: _Optional[_Iterable[_Union[Batch.State, str]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PurgeBatchesResponse(_message.Message):
    __slots__ = ("purged_count",)
    PURGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    purged_count: int
    def __init__(self, purged_count: _Optional[int] = ...) -> None: ...

class UpdateBatchRequest(_message.Message):
    __slots__ = ("batch", "update_mask")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class BatchGetBatchesRequest(_message.Message):
    __slots__ = ("batch_ids", "view")
    BATCH_IDS_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    batch_ids: _containers.RepeatedScalarFieldContainer[str]
    view: BatchView
    def __init__(self, batch_ids: _Optional[_Iterable[str]] = ..., view: _Optional[_Union[BatchView, str]] = ...) -> None: ...

class BatchGetBatchesResponse(_message.Message):
    __slots__ = ("batches", "missing_batch_ids")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    MISSING_BATCH_IDS_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    missing_batch_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ..., missing_batch_ids: _Optional[_Iterable[str]] = ...) -> None: ...
