"""The proto's google.api.field_behavior annotations say what the service does:
every request and resource field is annotated, a REQUIRED field left out is
INVALID_ARGUMENT naming it, and OUTPUT_ONLY fields sent to CreateBatch are
ignored."""
import uuid

import grpc
import pytest
from google.api import field_behavior_pb2
from google.protobuf import timestamp_pb2

from batch_history_client import Batch
from batch_history_client.errors import InvalidArgument, from_rpc_error
from batchhistory.v1 import batch_history_pb2 as pb
from batchhistory.v1 import batch_history_pb2_grpc as pb_grpc

REQUIRED = field_behavior_pb2.FieldBehavior.REQUIRED
OUTPUT_ONLY = field_behavior_pb2.FieldBehavior.OUTPUT_ONLY


def behaviour(field):
    return list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def test_every_request_and_resource_field_is_annotated():
    service = pb.DESCRIPTOR.services_by_name["BatchHistory"]
    messages = {method.input_type for method in service.methods}
    messages |= {pb.Batch.DESCRIPTOR, pb.BatchError.DESCRIPTOR, pb.ModelSwitch.DESCRIPTOR}
    unannotated = [f"{m.name}.{f.name}" for m in messages for f in m.fields if not behaviour(f)]
    assert not unannotated


@pytest.fixture
def stub(server_addr):
    with grpc.insecure_channel(server_addr) as channel:
        yield pb_grpc.BatchHistoryStub(channel)


def fresh_id():
    return f"fb-{uuid.uuid4().hex[:12]}"


def running(stub):
    batch_id = fresh_id()
    stub.CreateBatch(pb.CreateBatchRequest(batch_id=batch_id, batch=Batch(provider="groq")),
                     timeout=5)
    return batch_id


def valid_requests(stub):
    """One request per unary method that the service accepts as it is."""
    finished = running(stub)
    stub.FinishBatch(pb.FinishBatchRequest(batch_id=finished, state=Batch.COMPLETED), timeout=5)
    long_ago = timestamp_pb2.Timestamp(seconds=1)
    return {
        "CreateBatch": pb.CreateBatchRequest(batch=Batch(provider="groq")),
        "GetBatch": pb.GetBatchRequest(batch_id=finished),
        "RecordProgress": pb.RecordProgressRequest(batch_id=running(stub), samples_delta=1),
        "FinishBatch": pb.FinishBatchRequest(batch_id=running(stub), state=Batch.STOPPED),
        "DeleteBatch": pb.DeleteBatchRequest(batch_id=running(stub), force=True),
        "SaveBatch": pb.SaveBatchRequest(batch=Batch(batch_id=fresh_id(), state=Batch.RUNNING)),
        "PurgeBatches": pb.PurgeBatchesRequest(older_than=long_ago, dry_run=True),
        "BatchGetBatches": pb.BatchGetBatchesRequest(batch_ids=[finished]),
        "UpdateBatch": pb.UpdateBatchRequest(batch=Batch(batch_id=finished, topic_filter="t")),
    }


def test_a_required_field_left_out_is_invalid_and_named(stub):
    service = pb.DESCRIPTOR.services_by_name["BatchHistory"]
    checked = []
    for name, request in valid_requests(stub).items():
        method = getattr(stub, name)
        for field in service.methods_by_name[name].input_type.fields:
            if REQUIRED not in behaviour(field):
                continue
            without = type(request)()
            without.CopyFrom(request)
            without.ClearField(field.name)
            with pytest.raises(grpc.RpcError) as caught:
                method(without, timeout=5)
            error = from_rpc_error(caught.value)
            assert isinstance(error, InvalidArgument), (name, field.name, error)
            assert error.metadata["field"].split(".")[0].split("[")[0] in (
                field.name, "batch"), (name, field.name, error.metadata)
            checked.append(f"{name}.{field.name}")
        method(request, timeout=5)  # and with every field, it is accepted
    assert sorted(checked) == [
        "BatchGetBatches.batch_ids", "CreateBatch.batch", "DeleteBatch.batch_id",
        "FinishBatch.batch_id", "FinishBatch.state", "GetBatch.batch_id",
        "PurgeBatches.older_than", "RecordProgress.batch_id", "SaveBatch.batch",
        "UpdateBatch.batch"]


def test_a_batch_error_without_its_required_message_is_named(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordProgress(pb.RecordProgressRequest(
            batch_id=running(stub), errors=[pb.BatchError()]), timeout=5)
    assert from_rpc_error(caught.value).metadata["field"] == "errors[0].message"


def test_output_only_fields_sent_to_create_are_ignored(stub):
    batch = Batch(provider="groq")
    for field in pb.Batch.DESCRIPTOR.fields:
        if OUTPUT_ONLY not in behaviour(field):
            continue
        if field.name in ("state",):
            batch.state = Batch.FAILED
        elif field.type == field.TYPE_INT64:
            setattr(batch, field.name, 7)
        elif field.type == field.TYPE_STRING:
            setattr(batch, field.name, "from-the-caller")
        elif field.message_type is not None and field.message_type.name == "Timestamp":
            getattr(batch, field.name).CopyFrom(timestamp_pb2.Timestamp(seconds=2_000_000_000))
        elif field.message_type is not None:  # errors, model_switches
            entry = getattr(batch, field.name).add()
            for required in entry.DESCRIPTOR.fields:
                if required.type == required.TYPE_STRING:
                    setattr(entry, required.name, "from-the-caller")
    created = stub.CreateBatch(pb.CreateBatchRequest(batch=batch), timeout=5)
    assert created.state == Batch.RUNNING
    assert (created.samples_generated, created.total_tokens, created.error_count) == (0, 0, 0)
    assert not created.errors and not created.model_switches
    assert not created.HasField("end_time")
    assert created.etag != "from-the-caller"
    assert created.current_model != "from-the-caller"
    assert created.update_time.seconds < 2_000_000_000


def test_update_corrects_exactly_the_fields_a_caller_may_set(stub):
    """UpdateBatch's mask refuses every OUTPUT_ONLY and IMMUTABLE field of
    Batch, and takes every OPTIONAL one but etag (which it checks instead)."""
    from google.protobuf import field_mask_pb2
    batch_id = running(stub)
    for field in pb.Batch.DESCRIPTOR.fields:
        request = pb.UpdateBatchRequest(batch=Batch(batch_id=batch_id),
                                        update_mask=field_mask_pb2.FieldMask(paths=[field.name]))
        settable = field_behavior_pb2.FieldBehavior.OPTIONAL in behaviour(field)
        if settable and field.name != "etag":
            stub.UpdateBatch(request, timeout=5)
            continue
        with pytest.raises(grpc.RpcError) as caught:
            stub.UpdateBatch(request, timeout=5)
        error = from_rpc_error(caught.value)
        assert isinstance(error, InvalidArgument), field.name
        assert error.metadata["field"] == "update_mask.paths[0]", field.name
