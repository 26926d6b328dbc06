"""The news calendar file: NewsEvent entries as a JSON list or a CSV, times as int ns or ISO-8601.

JSON: `[{"event_id": "fomc-2020-03-15", "name": "FOMC", "start": "2020-03-15T18:00:00Z",
"end": "2020-03-16T14:30:00Z", "impact": "high", "strategies": []}, ...]`.
CSV: a header `event_id,name,start,end,impact` (impact optional, default high), one event a line.
A bad file fails the service at start with the line or entry at fault: a calendar that silently loses
events would leave strategies trading through them.
"""

import csv
import json
from pathlib import Path
from typing import Any

import msgspec

from qmp_core.messages import NewsEvent


def parse_time(value: Any) -> int:
    """Return int ns from an int / float ns or an ISO-8601 string (naive means UTC)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a time (int ns or ISO-8601), got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    # pandas is imported only here, for a calendar with ISO-8601 times: it is a second of a restart's import
    # time otherwise, and a restarted risk must be back in seconds (issue 12).
    import pandas as pd

    stamp = pd.Timestamp(str(value))
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.value)


def _event(raw: dict[str, Any], where: str) -> NewsEvent:
    try:
        fields = dict(raw)
        fields["start"] = parse_time(fields["start"])
        fields["end"] = parse_time(fields["end"])
        event = msgspec.convert(fields, NewsEvent)
    except (KeyError, ValueError, TypeError, msgspec.ValidationError) as error:
        raise ValueError(f"{where}: invalid news event {raw!r}: {error}") from error
    if event.end <= event.start:
        raise ValueError(f"{where}: news event {event.event_id} ends before it starts")
    return event


def load_calendar(path: str | Path) -> list[NewsEvent]:
    """Return the events of a JSON or CSV calendar file; ValueError saying where it is wrong."""
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        return [_event({k: v for k, v in row.items() if v not in (None, "")}, f"{file}:{i + 2}")
                for i, row in enumerate(rows)]
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not JSON: {error}") from error
    if not isinstance(entries, list):
        raise ValueError(f"{file}: expected a JSON list of news events, got {type(entries).__name__}")
    return [_event(entry, f"{file}[{i}]") for i, entry in enumerate(entries)]
