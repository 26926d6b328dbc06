"""`qmp monitor`: sample the running stack at an interval, append each reading to a CSV, show them live.

    qmp monitor --metrics risk,performance,latency [--strategy S ...] [--interval 5s] [--duration 60m]
                [--output metrics.csv]

Groups (`--metrics`, comma-separated; all four by default):
- risk: each strategy's latest RiskSnapshot: VaR and ES by method and level, drawdown (now, over 24 h, the
  largest), the volatility ratio, the breakers in force;
- performance: each strategy's latest PortfolioSnapshot (equity, cash, realized and unrealized PnL, fees,
  gross exposure, positions, orders, fills) and its effective trading state (allocation, size multiplier,
  halted 0/1);
- latency: each service's health round trip, in ms, and its resident memory where it runs on this machine;
  a service that does not answer reads `up` 0;
- gates: the monitoring table of each strategy's rollout as the deployer last evaluated it (drawdown, VaR,
  slippage, API latency, memory, ...): the value against its warning and critical levels.

A row is: time (UTC, ISO 8601), group, strategy (empty for a service's row), metric, value, warning,
critical, level (ok, warning, critical; empty where no level applies). Levels are the deployer's: the
gates carry the plan's levels; `up` 0 and a strategy halted read critical. Rows are appended, so one
file holds several runs; the header is written when the file is new. Everything is read from the bus
(stream messages, KV buckets, health requests) with the operator's credentials: nothing in a service
changes when it is watched.
"""

import asyncio
import csv
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import nats
import psutil
import typer
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from rich.console import Console
from rich.live import Live
from rich.table import Table

from qmp_core import bus, subjects
from qmp_core.messages import PortfolioSnapshot, RiskSnapshot, RolloutState, codec
from qmp_core.trading_state import ControlEntries
from qmp_ops.runtime.supervisor import SERVICES, Connection

GROUPS = ("risk", "performance", "latency", "gates")
HEALTH_TIMEOUT_S = 1.0
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
console = Console()


@dataclass(frozen=True)
class Reading:
    """One row of the monitor's output."""

    time: str
    group: str
    strategy: str
    metric: str
    value: float | None
    warning: float | None = None
    critical: float | None = None
    level: str = ""


COLUMNS = tuple(field.name for field in fields(Reading))


def seconds(text: str) -> float:
    """Parse `5`, `5s`, `250ms`, `10m`, `1h`, `5d` into seconds; ValueError otherwise."""
    match = DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (write 5s, 250ms, 10m, 1h or 5d)")
    return float(match.group(1)) * UNIT_S[match.group(2) or "s"]


def parse_groups(text: str) -> list[str]:
    """The groups asked for, in GROUPS' order; ValueError naming the known ones for anything else."""
    asked = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(asked - set(GROUPS))
    if unknown or not asked:
        raise ValueError(f"unknown metric group {unknown or [text]}: choose from {', '.join(GROUPS)}")
    return [group for group in GROUPS if group in asked]


class Sampler:
    """Reads the stack's state over one NATS connection; `sample` returns one round of readings."""

    def __init__(self, nc: nats.NATS, groups: Sequence[str], strategies: Sequence[str] = ()) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.groups = list(groups)
        self.strategies = list(strategies)
        self._risk = codec(RiskSnapshot)
        self._portfolio = codec(PortfolioSnapshot)
        self._rollout = codec(RolloutState)
        self._rollouts: KeyValue | None = None

    async def sample(self) -> list[Reading]:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        readings: list[Reading] = []
        entries = await bus.read_control_entries(self.js)  # once per round: every strategy's state
        strategies = self.strategies or await self._strategies(entries)
        if "latency" in self.groups:
            readings += await self._latency(now)
        for strategy in strategies:
            if "risk" in self.groups:
                readings += await self._risk_readings(now, strategy)
            if "performance" in self.groups:
                readings += await self._performance(now, strategy, entries)
            if "gates" in self.groups:
                readings += await self._gates(now, strategy)
        return readings

    async def _strategies(self, entries: ControlEntries) -> list[str]:
        """Every strategy with a portfolio on the bus or an entry in the control bucket."""
        found = {strategy for strategy in entries.strategies() if strategy != subjects.ALL_STRATEGIES}
        try:
            info = await self.js.stream_info(subjects.STREAM_EXEC, subjects_filter=subjects.PORTFOLIO_ALL)
            found |= {subjects.strategy_of(subject) for subject in (info.state.subjects or {})}
        except NotFoundError:
            pass
        return sorted(found)

    async def _last(self, stream: str, subject: str) -> bytes | None:
        try:
            return (await self.js.get_last_msg(stream, subject)).data
        except NotFoundError:
            return None

    async def _latency(self, now: str) -> list[Reading]:
        readings: list[Reading] = []
        for service in SERVICES:
            started = time.perf_counter()
            try:
                reply = await self.nc.request(subjects.health(service), b"", timeout=HEALTH_TIMEOUT_S)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                readings.append(Reading(now, "latency", "", f"{service}.up", 0.0, level="critical"))
                continue
            elapsed_ms = (time.perf_counter() - started) * 1e3
            readings.append(Reading(now, "latency", "", f"{service}.up", 1.0, level="ok"))
            readings.append(Reading(now, "latency", "", f"{service}.health_reply_ms", round(elapsed_ms, 3)))
            memory = _memory_mb(msgspec.json.decode(reply.data).get("pid"))
            if memory is not None:
                readings.append(Reading(now, "latency", "", f"{service}.memory_mb", round(memory, 1)))
        return readings

    async def _risk_readings(self, now: str, strategy: str) -> list[Reading]:
        data = await self._last(subjects.STREAM_RISK, subjects.snapshot(strategy))
        if data is None:
            return []
        snapshot = self._risk.decode(data)
        values: dict[str, float | None] = {f"var.{key}": value for key, value in sorted(snapshot.var.items())}
        values |= {f"es.{key}": value for key, value in sorted(snapshot.es.items())}
        values |= {"drawdown": snapshot.drawdown, "drawdown_24h": snapshot.drawdown_24h,
                   "drawdown_max": snapshot.drawdown_max, "volatility_ratio": snapshot.volatility_ratio,
                   "breakers": float(len(snapshot.breakers))}
        return [Reading(now, "risk", strategy, metric, _number(value), level=(
            ("critical" if value else "ok") if metric == "breakers" else "")) for metric, value in values.items()]

    async def _performance(self, now: str, strategy: str, entries: ControlEntries) -> list[Reading]:
        readings: list[Reading] = []
        data = await self._last(subjects.STREAM_EXEC, subjects.portfolio(strategy))
        if data is not None:
            book = self._portfolio.decode(data)
            gross = book.gross_exposure()
            values = {"equity": book.equity, "cash": book.cash, "realized_pnl": book.realized_pnl,
                      "unrealized_pnl": book.unrealized_pnl, "fees": book.fees, "gross_exposure": gross,
                      "positions": float(sum(1 for q in book.quantities if q)), "orders": float(book.orders_total),
                      "fills": float(book.fills_total)}
            readings += [Reading(now, "performance", strategy, metric, _number(value))
                         for metric, value in values.items()]
        state = entries.effective(strategy)
        readings += [
            Reading(now, "performance", strategy, "allocation", state.allocation),
            Reading(now, "performance", strategy, "size_multiplier", state.size_multiplier),
            Reading(now, "performance", strategy, "halted", float(state.status == "HALTED"),
                    level="critical" if state.status == "HALTED" else "ok"),
        ]
        return readings

    async def _gates(self, now: str, strategy: str) -> list[Reading]:
        try:
            if self._rollouts is None:
                self._rollouts = await self.js.key_value(subjects.KV_ROLLOUTS)
            entry = await self._rollouts.get(subjects.rollout_key(strategy))
        except (BucketNotFoundError, KeyNotFoundError):
            return []
        if not entry.value:
            return []
        rollout = self._rollout.decode(entry.value)
        return [Reading(now, "gates", strategy, gate.metric, _number(gate.value), gate.warning, gate.critical,
                        gate.level) for gate in rollout.gates]


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _memory_mb(pid: Any) -> float | None:
    """Resident memory of a service's process when it runs on this machine, else None."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def append_csv(path: Path, readings: Iterable[Reading]) -> int:
    """Append readings to a CSV (the header first when the file is new); return the rows written."""
    new = not path.exists() or path.stat().st_size == 0
    rows = 0
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(COLUMNS)
        for reading in readings:
            writer.writerow(["" if cell is None else cell for cell in astuple(reading)])
            rows += 1
    return rows


def table(readings: Sequence[Reading]) -> Table:
    view = Table(title=f"qmp monitor · {readings[0].time if readings else 'no readings yet'}")
    for column in ("group", "strategy", "metric", "value", "warning", "critical", "level"):
        view.add_column(column, justify="right" if column in ("value", "warning", "critical") else "left")
    colours = {"ok": "green", "warning": "yellow", "critical": "red"}
    for r in readings:
        level = f"[{colours[r.level]}]{r.level}[/]" if r.level in colours else r.level
        view.add_row(r.group, r.strategy, r.metric, _shown(r.value), _shown(r.warning), _shown(r.critical), level)
    return view


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:,.6g}"


async def run(connection: Connection, groups: Sequence[str], strategies: Sequence[str], interval_s: float,
              duration_s: float, output: Path | None, live: Live | None = None) -> int:
    """Sample every `interval_s` until `duration_s` has passed (0: until interrupted); return rows written."""
    nc = await connection.connect()
    sampler = Sampler(nc, groups, strategies)
    written = 0
    deadline = time.monotonic() + duration_s if duration_s > 0 else math.inf
    try:
        while True:
            started = time.monotonic()
            readings = await sampler.sample()
            if output is not None:
                written += append_csv(output, readings)
            if live is not None:
                live.update(table(readings))
            else:
                console.print(f"{len(readings)} readings" + (f" → {output}" if output else ""), highlight=False)
            pause = interval_s - (time.monotonic() - started)
            if time.monotonic() + max(pause, 0.0) >= deadline:
                return written
            await asyncio.sleep(max(pause, 0.0))
    finally:
        await nc.close()


def monitor(
    metrics: Annotated[str, typer.Option(help=f"metric groups, comma-separated: {', '.join(GROUPS)}")] = ",".join(
        GROUPS),
    strategy: Annotated[list[str] | None, typer.Option(help="a strategy to watch (repeat it); default: all")] = None,
    interval: Annotated[str, typer.Option(help="time between samples: 5s, 250ms, 1m")] = "5s",
    duration: Annotated[str, typer.Option(help="how long to run (10m, 1h); 0: until Ctrl-C")] = "0",
    output: Annotated[Path | None, typer.Option(help="CSV to append every reading to")] = None,
) -> None:
    """Sample the running stack: risk, performance, latency and the rollouts' gates, with their warning and
    critical levels; a live table in the terminal, every row appended to `--output`."""
    try:
        groups = parse_groups(metrics)
        interval_s, duration_s = seconds(interval), seconds(duration)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    if interval_s <= 0:
        raise typer.BadParameter("--interval must be more than 0")
    connection = Connection.read()
    try:
        if console.is_terminal:
            with Live(table([]), console=console, refresh_per_second=2) as live:
                written = asyncio.run(run(connection, groups, strategy or [], interval_s, duration_s, output, live))
        else:
            written = asyncio.run(run(connection, groups, strategy or [], interval_s, duration_s, output))
    except KeyboardInterrupt:
        return
    if output is not None:
        console.print(f"{written} rows appended to {output}", highlight=False)
