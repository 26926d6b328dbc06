"""Spans in the run directory: one JSON line each, laid out as OpenTelemetry's own `to_json` lays them out."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceState

from qmp_core.telemetry import JsonLinesSpanExporter


def test_span_file_when_spans_have_parents_events_links_and_errors_then_each_line_reads_as_to_json_reads(
        tmp_path: Path) -> None:
    path = tmp_path / "traces" / "svc.jsonl"
    exporter = JsonLinesSpanExporter(path)
    provider = TracerProvider(resource=Resource.create({"service.name": "qmp-svc"}))
    finished: list = []

    class Keep(SimpleSpanProcessor):
        def on_end(self, span) -> None:  # type: ignore[no-untyped-def]
            finished.append(span)
            super().on_end(span)

    provider.add_span_processor(Keep(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        with tracer.start_as_current_span("inner", links=[Link(outer.get_span_context(), {"why": "fan-in"})]) as inner:
            inner.set_attribute("qmp.command_id", "c1")
            inner.set_attribute("qmp.symbols", ("AAPL", "MSFT"))
            inner.add_event("retry", {"attempt": 2})
            inner.set_status(Status(StatusCode.ERROR, "database down"))
    # a whole second (isoformat would drop the microseconds) and a vendor's trace state on a link
    vendor = SpanContext(trace_id=7, span_id=9, is_remote=True, trace_state=TraceState([("vendor", "x1")]))
    whole = tracer.start_span("whole", start_time=1_700_000_000 * 10**9, links=[Link(vendor)])
    whole.end(end_time=1_700_000_001 * 10**9)
    exporter.shutdown()

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["inner", "outer", "whole"]
    assert lines == [json.loads(span.to_json(indent=None)) for span in finished]
    assert lines[0]["parent_id"] == lines[1]["context"]["span_id"]
    assert lines[0]["status"] == {"status_code": "ERROR", "description": "database down"}
    assert trace.format_trace_id(outer.get_span_context().trace_id) in lines[0]["context"]["trace_id"]


def test_setup_tracing_when_disabled_then_spans_record_nothing_and_no_file_is_written(tmp_path: Path) -> None:
    # In a process of its own: the tracer provider is global, set once, and this one must not be the suite's.
    script = (
        "import sys; from pathlib import Path; from opentelemetry import trace\n"
        "from qmp_core.telemetry import current_traceparent, setup_tracing\n"
        "enabled = sys.argv[2] == 'on'\n"
        "provider = setup_tracing('probe', Path(sys.argv[1]), enabled=enabled)\n"
        "with trace.get_tracer('probe').start_as_current_span('probe.span') as span:\n"
        "    print(span.is_recording(), bool(current_traceparent()))\n"
        "provider.shutdown()\n"
    )
    for mode, expected in (("off", "False False"), ("on", "True True")):
        run = subprocess.run([sys.executable, "-c", script, str(tmp_path / mode), mode], capture_output=True,
                             text=True, timeout=60, check=True)
        assert run.stdout.split("\n")[0] == expected, (mode, run.stdout, run.stderr)
    assert not (tmp_path / "off" / "traces").exists()
    assert (tmp_path / "on" / "traces" / "probe.jsonl").read_text().count("probe.span") == 1


async def test_setup_tracing_when_otlp_protocol_grpc_then_a_grpc_collector_receives_the_spans(tmp_path: Path) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[tuple[str, str]] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        async def Export(self, request, context):  # the name the gRPC service gives it
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                received.extend((service, span.name) for scope in resource_spans.scope_spans for span in scope.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    script = (
        "import sys; from opentelemetry import trace\n"
        "from qmp_core.telemetry import setup_tracing\n"
        "provider = setup_tracing('probe', None, sys.argv[1], otlp_protocol='grpc')\n"
        "with trace.get_tracer('probe').start_as_current_span('probe.grpc'):\n"
        "    pass\n"
        "provider.shutdown()\n"  # flushes the batch to the collector before the process ends
    )
    try:
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, f"http://127.0.0.1:{port}",
                                                       stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await server.stop(None)
    assert process.returncode == 0, stderr.decode()
    assert received == [("qmp-probe", "probe.grpc")]
    assert not (tmp_path / "traces").exists()


def test_messaging_when_a_consumer_group_is_named_then_attributes_follow_the_messaging_conventions() -> None:
    from qmp_core.telemetry import messaging

    assert messaging("qmp.md.x.bars", "process", "risk-bars") == {
        "messaging.system": "nats", "messaging.destination.name": "qmp.md.x.bars",
        "messaging.operation.type": "process", "messaging.consumer.group.name": "risk-bars"}
    assert "messaging.consumer.group.name" not in messaging("qmp.control.risk.s", "publish")
