"""OpenTelemetry setup, trace context over NATS headers, and structured JSON logs with trace ids.

With no collector configured, finished spans go as JSON lines to `<run_dir>/traces/<service>.jsonl`, which
`qmp trace` reads back; spans are linked across services through the W3C `traceparent` header.
"""

import json
import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util import ns_to_iso_str
from opentelemetry.trace import SpanContext, format_span_id, format_trace_id


def _iso(ns: int | None) -> str | None:
    return ns_to_iso_str(ns) if ns else None


def _span_context(span_context: SpanContext) -> dict[str, str]:
    return {"trace_id": f"0x{format_trace_id(span_context.trace_id)}",
            "span_id": f"0x{format_span_id(span_context.span_id)}", "trace_state": repr(span_context.trace_state)}


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if attributes is None else dict(attributes)


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """Return a span as OpenTelemetry's `ReadableSpan.to_json` lays it out, built without its indenting encoder.

    The same fields, formatted with the SDK's own helpers, so that anything reading the files reads either;
    `to_json` costs ~35 µs a span in the exporter's thread, which holds the GIL the service's event loop
    needs (seen as tens of ms of halt latency when thousands of requests a second are traced).
    """
    status: dict[str, str] = {"status_code": span.status.status_code.name}
    if span.status.description:
        status["description"] = span.status.description
    return {
        "name": span.name,
        "context": _span_context(span.context) if span.context else None,
        "kind": str(span.kind),
        "parent_id": f"0x{format_span_id(span.parent.span_id)}" if span.parent is not None else None,
        "start_time": _iso(span.start_time),
        "end_time": _iso(span.end_time),
        "status": status,
        "attributes": _attributes(span.attributes),
        "events": [{"name": event.name, "timestamp": ns_to_iso_str(event.timestamp),
                    "attributes": _attributes(event.attributes)} for event in span.events],
        "links": [{"context": _span_context(link.context), "attributes": _attributes(link.attributes)}
                  for link in span.links],
        "resource": {"attributes": dict(span.resource.attributes), "schema_url": span.resource.schema_url},
    }


class JsonLinesSpanExporter(SpanExporter):
    """Append each finished span as one JSON line to a file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(self._encoder.encode(span_record(span)) + b"\n" for span in spans)
        with self._lock:
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def setup_tracing(service: str, run_dir: Path | None, otlp_endpoint: str = "", enabled: bool = True,
                  otlp_protocol: str = "http") -> TracerProvider:
    """Install a tracer provider: OTLP when an endpoint is configured (over HTTP to `<endpoint>/v1/traces`, or
    gRPC to `<endpoint>` with `otlp_protocol="grpc"`), else a file under run_dir.

    Not `enabled`: the provider is returned (for the caller's shutdown) but not installed, so every span is
    OpenTelemetry's no-op one and nothing is recorded, propagated or exported.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": f"qmp-{service}"}))
    if not enabled:
        return provider
    if otlp_endpoint and otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        # http:// is a plaintext channel, https:// a TLS one (the exporter reads the scheme)
        provider.add_span_processor(BatchSpanProcessor(GrpcExporter(endpoint=otlp_endpoint)))
    elif otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{otlp_endpoint}/v1/traces")))
    elif run_dir is not None:
        provider.add_span_processor(
            BatchSpanProcessor(JsonLinesSpanExporter(run_dir / "traces" / f"{service}.jsonl"),
                               schedule_delay_millis=1000)
        )
    trace.set_tracer_provider(provider)
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_context(headers: dict[str, str]) -> None:
    """Put the current trace context into NATS headers."""
    propagate.inject(headers)


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    """Return the trace context carried by NATS headers (empty when there is none)."""
    return propagate.extract(dict(headers or {}))


def messaging(subject: str, operation: str, consumer_group: str = "") -> dict[str, str]:
    """A span's attributes after OpenTelemetry's messaging conventions: the system, the subject as the
    destination, the operation (`publish`, `receive`, `process`) and the durable consumer that took it."""
    attributes = {"messaging.system": "nats", "messaging.destination.name": subject,
                  "messaging.operation.type": operation}
    if consumer_group:
        attributes["messaging.consumer.group.name"] = consumer_group
    return attributes


def current_traceparent() -> str:
    """Return the current span's W3C `traceparent` ("" outside a span), to keep with a record that carries no
    headers (a bucket entry), so whatever the record causes later can join the trace."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers.get("traceparent", "")


def context_of(traceparent: str) -> context.Context:
    """Return the trace context a `traceparent` names (empty for "")."""
    return propagate.extract({"traceparent": traceparent} if traceparent else {})


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the service, the trace id of the current span and any extras."""

    RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        span_context = trace.get_current_span().get_span_context()
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        entry.update({k: v for k, v in vars(record).items() if k not in self.RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def quiet_tls_upgrade_warning(record: logging.LogRecord) -> bool:
    """Drop asyncio's warning at the close of a connection upgraded to TLS after it opened.

    nats-py starts TLS once the server's INFO asks for it (and the PostgreSQL TLS front once the client's
    SSLRequest does); asyncio's stream protocol then answers end-of-file the plaintext way and asyncio
    warns, on every close, that the answer has no effect. Nothing is wrong: the connection closes normally.
    """
    return "has no effect when using ssl" not in record.getMessage()


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
