"""Failed calls raise the exception their ErrorInfo reason names."""
import grpc
import pytest

from batch_history_client import Batch
from batch_history_client.errors import (BatchAlreadyFinished, BatchHistoryError, BatchNotFound,
                                         BatchRunning, InvalidArgument, from_rpc_error)
from batchhistory.v1 import batch_history_pb2 as pb
from batchhistory.v1 import batch_history_pb2_grpc as pb_grpc


@pytest.fixture
def stub(server_addr):
    with grpc.insecure_channel(server_addr) as channel:
        yield pb_grpc.BatchHistoryStub(channel)


def refusal(call, request) -> BatchHistoryError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    return from_rpc_error(caught.value)


def test_a_finished_batch_refuses_progress_with_the_state_it_ended_in(history):
    batch_id = history.start(provider="groq", target=10)
    history.finish(batch_id, state=Batch.FAILED)
    with pytest.raises(BatchAlreadyFinished) as caught:
        history.progress(batch_id, samples=1)
    error = caught.value
    assert (error.reason, error.batch_id, error.state) == (
        "BATCH_ALREADY_FINISHED", batch_id, "FAILED")
    assert isinstance(error, grpc.RpcError), "code that caught grpc.RpcError still does"
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_missing_batch_is_none_from_get_and_batch_not_found_from_progress(history):
    assert history.get("batch_0_00000000") is None
    with pytest.raises(BatchNotFound) as caught:
        history.progress("batch_0_00000000", samples=1)
    assert caught.value.batch_id == "batch_0_00000000"


def test_deleting_a_running_batch_is_refused_unless_forced(history, stub):
    batch_id = history.start(provider="groq")
    error = refusal(stub.DeleteBatch, pb.DeleteBatchRequest(batch_id=batch_id))
    assert isinstance(error, BatchRunning)
    assert error.metadata == {"batch_id": batch_id, "state": "RUNNING"}
    assert history.get(batch_id)["status"] == "running"
    stub.DeleteBatch(pb.DeleteBatchRequest(batch_id=batch_id, force=True), timeout=5)
    assert history.get(batch_id) is None


def test_an_invalid_field_is_named(stub):
    error = refusal(stub.GetBatch, pb.GetBatchRequest(batch_id=""))
    assert isinstance(error, InvalidArgument)
    assert error.metadata["field"] == "batch_id"
