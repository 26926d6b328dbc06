"""Read back the spans the services write to `<run dir>/traces/<service>.jsonl` and lay a trace out as a tree.

A trace is found by its trace id (32 hex digits, `0x` or not), by the id of one of its spans, or by the
value of any of its spans' attributes (a control command's `qmp.command_id`, a breaker, a strategy): every
trace that holds a match is shown, the latest first, at most `limit` of them. The files are read line by
line and a line is decoded only when it holds the id, so a long replay's traces are searched quickly.
"""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from qmp_core.clock import parse_ns

TRACE_ID = re.compile(r"^(0x)?[0-9a-fA-F]{32}$")


@dataclass
class Span:
    trace_id: str  # 32 hex digits, no prefix
    span_id: str
    parent_id: str  # "" for a root
    name: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    children: list["Span"] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _hex(value: str | None) -> str:
    return (value or "").removeprefix("0x").lower()


def _ns(stamp: str | None) -> int:
    return parse_ns(stamp) if stamp else 0


def _span(record: dict[str, Any]) -> Span | None:
    context = record.get("context") or {}
    if not context.get("trace_id"):
        return None
    service = str(((record.get("resource") or {}).get("attributes") or {}).get("service.name", "?"))
    return Span(trace_id=_hex(context["trace_id"]), span_id=_hex(context.get("span_id")),
                parent_id=_hex(record.get("parent_id")), name=str(record.get("name", "")),
                service=service.removeprefix("qmp-"), start_ns=_ns(record.get("start_time")),
                end_ns=_ns(record.get("end_time")), status=str((record.get("status") or {}).get("status_code", "")),
                attributes=dict(record.get("attributes") or {}))


def _records(files: Iterable[Path], needle: str | None = None) -> Iterator[Span]:
    decoder = msgspec.json.Decoder()
    for path in files:
        with path.open("rb") as handle:
            for line in handle:
                if needle is not None and needle.encode() not in line:
                    continue
                try:
                    span = _span(decoder.decode(line))
                except (msgspec.DecodeError, ValueError, TypeError):
                    continue  # a line cut short by a service that died while writing it
                if span is not None:
                    yield span


def _matches(span: Span, wanted: str) -> bool:
    return wanted in (span.trace_id, span.span_id) or any(str(v) == wanted for v in span.attributes.values())


def find(traces_dir: Path, wanted: str, limit: int = 5) -> tuple[list[list[Span]], int]:
    """Return (the traces that match `wanted` as their root spans, latest first, at most `limit`; how many
    traces match)."""
    files = sorted(traces_dir.glob("*.jsonl"))
    key = _hex(wanted) if TRACE_ID.match(wanted) else wanted
    needle = key if TRACE_ID.match(wanted) else wanted
    trace_ids: dict[str, int] = {}  # trace id → latest start of a matching span
    for span in _records(files, needle):
        if _matches(span, key):
            trace_ids[span.trace_id] = max(trace_ids.get(span.trace_id, 0), span.start_ns)
    chosen = sorted(trace_ids, key=lambda t: -trace_ids[t])[:limit]
    spans: dict[str, list[Span]] = {trace_id: [] for trace_id in chosen}
    for trace_id in chosen:
        spans[trace_id] = list(_records(files, trace_id))
    return [_tree(spans[trace_id]) for trace_id in chosen], len(trace_ids)


def _tree(spans: list[Span]) -> list[Span]:
    """Link spans to their parents; return the roots (spans whose parent is not in the files) by start."""
    by_id = {span.span_id: span for span in spans}
    roots = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_id) if span.parent_id else None
        if parent is None or parent is span:
            roots.append(span)
        else:
            parent.children.append(span)
    return roots


SHOWN_ATTRIBUTES = 6


def render(traces: list[list[Span]]) -> list[str]:
    """Return each trace as lines: offset from the trace's first span, duration, service, name, attributes."""
    lines: list[str] = []
    for roots in traces:
        if not roots:
            continue
        origin = min(root.start_ns for root in roots)
        lines.append(f"trace {roots[0].trace_id}  (start offset, duration, service: span)")

        def walk(span: Span, depth: int, origin: int = origin) -> None:
            shown = ", ".join(f"{k}={v}" for k, v in list(span.attributes.items())[:SHOWN_ATTRIBUTES])
            error = "  [ERROR]" if span.status == "ERROR" else ""
            lines.append(f"  {(span.start_ns - origin) / 1e6:9.2f} ms {span.duration_ms:9.2f} ms  "
                         f"{'  ' * depth}{span.service}: {span.name}{error}" + (f"  ({shown})" if shown else ""))
            for child in span.children:
                walk(child, depth + 1)

        for root in roots:
            walk(root, 0)
    return lines
