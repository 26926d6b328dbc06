"""The launch report (`qmp report launch`): the running stack against the launch's success criteria.

- uptime > 99%: each service's time up in the window, the lowest of the four: a service `qmp up` started
  once and never restarted was up all along; otherwise its current process's time up counts, and the time
  before its last start as down;
- error rate < 1%: dead letters in the window (every `qmp.dlq.<service>`) over the messages taken;
- control response p99 < 200 ms: control requests from arrival to reply (the deployer's
  `qmp_control_reply_seconds`);
- successful trades > 95%: the orders accepted in the window that were filled, at least in part.

The window starts at `--since`, or when the stack's run began (its run directory's connection file). Each
figure says where it came from; one that cannot be measured (no metrics endpoint, no order) is "no data" and
does not pass.
"""

import asyncio
import html
import io
import json
import math
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from qmp_core import bus, subjects
from qmp_core.messages import DeadLetter, codec, execution_events
from qmp_ops.cli.control import service_health
from qmp_ops.runtime.supervisor import Connection, read_supervisor_record

UPTIME_MIN, ERROR_RATE_MAX, CONTROL_P99_MAX_S, FILLED_MIN = 0.99, 0.01, 0.200, 0.95


@dataclass
class Criterion:
    name: str
    value: float | None  # None: no data
    target: str
    passed: bool
    source: str


@dataclass
class LaunchReport:
    since_ns: int
    until_ns: int
    criteria: list[Criterion]
    uptime_by_service: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(criterion.passed for criterion in self.criteria)


def quantile_from_buckets(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' `histogram_quantile` over cumulative (upper bound, count) buckets: linear within a bucket."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: its value is the highest bound known
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def control_reply_buckets(metrics_text: str) -> list[tuple[float, float]]:
    """The deployer's control reply histogram, both lanes summed, as cumulative (upper bound, count)."""
    summed: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "qmp_control_reply_seconds_bucket":
                bound = float(sample.labels["le"])
                summed[bound] = summed.get(bound, 0.0) + sample.value
    return sorted(summed.items())


async def gather(connection: Connection, since_ns: int, now_ns: int,
                 deployer_metrics_url: str | None) -> LaunchReport:
    nc = await connection.connect()
    try:
        health = await service_health(nc, timeout_s=2.0)
        letters = [letter async for letter in
                   _decoded(nc, subjects.STREAM_DLQ, subjects.DLQ_ALL, codec(DeadLetter), since_ns)]
        accepted, filled = await trades_in_window(nc, since_ns)
    finally:
        await nc.close()
    window_s = max((now_ns - since_ns) / 1e9, 1e-9)
    supervised = read_supervisor_record(connection.run_dir) if connection.run_dir else {}

    def up_share(service: str, reply: dict[str, Any]) -> float:
        if reply.get("status") not in ("ok", "degraded"):
            return 0.0
        if service in supervised and supervised[service].get("restarts", 0) == 0:
            return 1.0  # `qmp up` started it once and it never died: up all along
        uptime_s = float(reply.get("detail", {}).get("liveness", {}).get("uptime_s", 0.0))
        return min(uptime_s, window_s) / window_s

    uptime = {service: up_share(service, reply) for service, reply in health.items()}
    handled = sum(int(h.get("detail", {}).get("liveness", {}).get("handled", 0)) for h in health.values())
    error_rate = len(letters) / (handled + len(letters)) if handled + len(letters) else None
    p99 = None
    source = "no metrics endpoint for the deployer"
    if deployer_metrics_url:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(deployer_metrics_url, timeout=5).read().decode())
        p99 = quantile_from_buckets(control_reply_buckets(text), 0.99)
        source = f"qmp_control_reply_seconds at {deployer_metrics_url}"
    share = len(filled & accepted) / len(accepted) if accepted else None
    lowest = min(uptime.values())
    criteria = [
        Criterion("uptime", lowest, "> 99%", lowest > UPTIME_MIN,
                  "the lowest service: " + ", ".join(f"{s} {u:.2%}" for s, u in uptime.items())),
        Criterion("error rate", error_rate, "< 1%", error_rate is not None and error_rate < ERROR_RATE_MAX,
                  f"{len(letters)} dead letters, {handled} messages handled"),
        Criterion("control response p99", p99, "< 200 ms", p99 is not None and p99 < CONTROL_P99_MAX_S, source),
        Criterion("successful trades", share, "> 95%", share is not None and share > FILLED_MIN,
                  f"{len(filled & accepted)} of {len(accepted)} accepted orders filled"),
    ]
    return LaunchReport(since_ns=since_ns, until_ns=now_ns, criteria=criteria, uptime_by_service=uptime)


def stored_ns(stored: bus.StoredMessage) -> int:
    """When the stream stored a message (its `Nats-Time-Stamp`, RFC 3339 with nanoseconds), as int ns: the
    window is wall-clock time, which a replay's event times are not."""
    stamp = stored.headers.get("Nats-Time-Stamp", "")
    if not stamp:
        return 0
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


async def _decoded(nc: Any, stream: str, subject: str, decoder: Any, since_ns: int) -> Any:
    async for stored in bus.read_stream(nc, stream, subject):
        if stored_ns(stored) < since_ns:
            continue
        try:
            yield decoder.decode(stored.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue


async def trades_in_window(nc: Any, since_ns: int) -> tuple[set[str], set[str]]:
    """Order ids accepted since `since_ns`, and order ids with a fill, from what the execution stream stored in
    the window (one message each, or a replay's BatchEvents)."""
    accepted: set[str] = set()
    filled: set[str] = set()
    async for stored in bus.read_stream(nc, subjects.STREAM_EXEC, subjects.EXEC_ALL):
        if stored_ns(stored) < since_ns:
            continue
        try:
            decisions, fills = execution_events(stored.subject, stored.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        accepted.update(d.order_id for d in decisions if d.__struct_config__.tag == "OrderAccepted")
        filled.update(f.order_id for f in fills)
    return accepted, filled


def _percent(value: float | None, unit: str) -> str:
    if value is None:
        return "no data"
    return f"{value * 1000:.1f} ms" if unit == "s" else f"{value:.2%}"


def markdown(report: LaunchReport) -> str:
    lines = ["# QMP launch report", "", f"verdict: **{'PASS' if report.passed else 'FAIL'}**", "",
             "| criterion | value | target | result | from |", "|---|---|---|---|---|"]
    for c in report.criteria:
        unit = "s" if "response" in c.name else "%"
        lines.append(f"| {c.name} | {_percent(c.value, unit)} | {c.target} | {'pass' if c.passed else 'FAIL'} | "
                     f"{c.source} |")
    return "\n".join(lines) + "\n"


def write(report: LaunchReport, folder: Path) -> tuple[Path, Path, Path]:
    """Write launch.md, launch.html (the table and a chart of each service's uptime) and launch.json."""
    from qmp_lab.verify.report import pyplot

    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "launch.md"
    md.write_text(markdown(report))
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 2.2))
    try:
        services = list(report.uptime_by_service)
        axes.barh(services, [100 * report.uptime_by_service[s] for s in services], color="#1f77b4")
        axes.axvline(100 * UPTIME_MIN, color="#d62728", linestyle="--", label="target 99%")
        axes.set_xlim(0, 100)
        axes.set_xlabel("uptime in the window, %")
        axes.legend(fontsize=8, frameon=False, loc="lower left")
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(figure)
    svg = buffer.getvalue()
    rows = "".join(f"<tr><td>{html.escape(c.name)}</td><td>{_percent(c.value, 's' if 'response' in c.name else '%')}"
                   f"</td><td>{html.escape(c.target)}</td><td>{'pass' if c.passed else '<b>FAIL</b>'}</td>"
                   f"<td>{html.escape(c.source)}</td></tr>" for c in report.criteria)
    page = folder / "launch.html"
    page.write_text(f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>QMP launch report"
                    f"</title></head><body><h1>QMP launch report: {'PASS' if report.passed else 'FAIL'}</h1>"
                    f"<table id=\"criteria\" border=\"1\"><tr><th>criterion</th><th>value</th><th>target</th>"
                    f"<th>result</th><th>from</th></tr>{rows}</table><section id=\"uptime\">"
                    f"{svg[svg.index('<svg'):]}</section></body></html>\n")
    data = folder / "launch.json"
    data.write_text(json.dumps(asdict(report) | {"passed": report.passed}, indent=2) + "\n")
    return md, page, data
