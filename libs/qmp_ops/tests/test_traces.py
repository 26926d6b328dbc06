"""`qmp trace`: spans written by two services' real exporters, read back as one tree across them."""

from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import format_trace_id
from typer.testing import CliRunner

from qmp_core.telemetry import JsonLinesSpanExporter, extract_context, inject_context
from qmp_ops.cli.main import app
from qmp_ops.traces import find, render


def provider(run_dir: Path, service: str) -> TracerProvider:
    made = TracerProvider(resource=Resource.create({"service.name": f"qmp-{service}"}))
    made.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(run_dir / "traces" / f"{service}.jsonl")))
    return made


def write_halt_trace(run_dir: Path) -> str:
    """A halt as the services trace it: risk's breaker sends the command; the deployer applies it."""
    risk, deployer = provider(run_dir, "risk"), provider(run_dir, "deployer")
    headers: dict[str, str] = {}
    with risk.get_tracer("t").start_as_current_span("risk.portfolio", attributes={"qmp.strategy": "mom"}) as root:
        with risk.get_tracer("t").start_as_current_span("risk.breaker", attributes={"qmp.breaker": "drawdown_24h"}):
            inject_context(headers)  # what travels in the NATS headers
    with deployer.get_tracer("t").start_as_current_span("deployer.control", context=extract_context(headers),
                                                        attributes={"qmp.command_id": "cmd-42"}):
        pass
    with risk.get_tracer("t").start_as_current_span("risk.portfolio", attributes={"qmp.strategy": "other"}):
        pass  # another trace, which must not be shown
    for made in (risk, deployer):
        made.shutdown()
    return format_trace_id(root.get_span_context().trace_id)


def test_find_when_command_id_given_then_its_whole_trace_across_services_as_a_tree(tmp_path: Path) -> None:
    trace_id = write_halt_trace(tmp_path)

    traces, matched = find(tmp_path / "traces", "cmd-42")

    assert matched == 1 and len(traces) == 1
    (root,) = traces[0]
    assert (root.service, root.name, root.trace_id) == ("risk", "risk.portfolio", trace_id)
    (breaker,) = root.children
    (control,) = breaker.children
    assert (breaker.name, control.service, control.name) == ("risk.breaker", "deployer", "deployer.control")
    lines = render(traces)
    assert lines[0].startswith(f"trace {trace_id}") and len(lines) == 4
    assert "deployer: deployer.control" in lines[3] and "qmp.command_id=cmd-42" in lines[3]


def test_trace_command_when_trace_id_or_unknown_id_given_then_tree_or_one_line_saying_nothing_matched(
        tmp_path: Path) -> None:
    trace_id = write_halt_trace(tmp_path)

    shown = CliRunner().invoke(app, ["trace", f"0x{trace_id}", "--run-dir", str(tmp_path)])
    missing = CliRunner().invoke(app, ["trace", "no-such-command", "--run-dir", str(tmp_path)])
    by_strategy = CliRunner().invoke(app, ["trace", "mom", "--run-dir", str(tmp_path)])

    assert shown.exit_code == 0 and "risk: risk.breaker" in shown.output and "other" not in shown.output
    assert missing.exit_code == 1 and "no span" in missing.output
    assert by_strategy.exit_code == 0 and shown.output == by_strategy.output
