"""Traces that join the caller's: a Python caller in a span calls the
service through the client, and a real OTLP receiver (a gRPC collector made
with opentelemetry-proto) gets the service's spans, in the caller's trace."""
import contextlib
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.sdk.trace import TracerProvider

from batchhistory.v1 import batch_history_pb2 as pb
from batchhistory.v1 import batch_history_pb2_grpc as pb_grpc
from conftest import serve

UNSAMPLED = "4bf92f3577b34da6a3ce929d0e0e4736"


class Collector(otlp_grpc.TraceServiceServicer):
    """Keeps every span exported to it."""

    def __init__(self):
        self.spans, self.resources, self.received = [], [], threading.Event()

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            self.resources.append(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        self.received.set()
        return otlp.ExportTraceServiceResponse()


@contextlib.contextmanager
def collector():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    kept = Collector()
    otlp_grpc.add_TraceServiceServicer_to_server(kept, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield kept, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def attributes(span):
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def test_a_callers_trace_continues_into_the_service(tmp_path):
    from batch_history_client import BatchHistory
    tracer = TracerProvider().get_tracer("dashboard")
    with collector() as (kept, endpoint):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "batch-history-test"}
        with serve(env) as server:
            client = BatchHistory(server.addr, timezone="UTC")
            try:
                with tracer.start_as_current_span("dashboard.save") as caller:
                    client.save({"id": "batch_1760796202_7aced000", "status": "running",
                                 "started_at": "2025-10-18T14:03:22", "current_model": "m",
                                 "samples_generated": 3, "tokens_used": 10,
                                 "errors": [], "model_switches": []})
                # Delivered by the outbox's thread, with the caller's context.
                assert client.flush(10)
                client.get("batch_1760796202_7aced000")  # outside any span: a trace of its own
                # A caller that does not sample its trace gets no spans from the service.
                stub = pb_grpc.BatchHistoryStub(grpc.insecure_channel(server.addr))
                stub.GetBatch(pb.GetBatchRequest(batch_id="batch_1760796202_7aced000"),
                              metadata=[("traceparent", f"00-{UNSAMPLED}-00f067aa0ba902b7-00")])
            finally:
                client.close()
        # Stopping the service flushes its spans.
        assert kept.received.wait(10), "no spans reached the collector"

    trace_id = caller.get_span_context().trace_id.to_bytes(16, "big")
    caller_id = caller.get_span_context().span_id.to_bytes(8, "big")
    in_trace = [s for s in kept.spans if s.trace_id == trace_id]
    server_spans = [s for s in in_trace if s.name == "batchhistory.v1.BatchHistory/SaveBatch"]
    assert len(server_spans) == 1, [s.name for s in kept.spans]
    call = server_spans[0]
    assert call.parent_span_id == caller_id
    assert call.kind == call.SPAN_KIND_SERVER
    assert attributes(call) | {"batch_history.request_id": None} == {
        "rpc.system": "grpc", "rpc.service": "batchhistory.v1.BatchHistory",
        "rpc.method": "SaveBatch", "rpc.grpc.status_code": 0,
        "batch_history.batch_id": "batch_1760796202_7aced000",
        "batch_history.request_id": None}
    children = sorted(s.name for s in in_trace if s.parent_span_id == call.span_id)
    assert children == ["db.pool_wait", "db.statement"]
    for child in in_trace:
        assert call.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= call.end_time_unix_nano
    service_names = {kv.value.string_value for r in kept.resources for kv in r.attributes
                     if kv.key == "service.name"}
    assert service_names == {"batch-history-test"}
    # The untraced call started a trace of its own.
    gets = [s for s in kept.spans if s.name.endswith("/GetBatch")]
    assert len(gets) == 1 and gets[0].trace_id != trace_id and not gets[0].parent_span_id
    assert not [s for s in kept.spans if s.trace_id == bytes.fromhex(UNSAMPLED)]
