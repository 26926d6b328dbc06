"""Gate readings and evaluations: what the deployer knows of each metric, and its level against the plan.

`Monitor` keeps the latest inputs (risk snapshots, fills, portfolio snapshots, probes of latency and
memory) and turns them into a `Reading` per metric: a value, or why there is none (`no_data`, `stale`,
`source_failed`). `evaluate_gate` compares a reading with the metric's levels. A reading without a
value is `inconclusive`: the phase holds, and stale risk data fails closed (see `rollout`).
"""

import math
from collections import deque
from dataclasses import dataclass, field

from qmp_core.dedup import RecentIds
from qmp_core.messages import Fill, GateResult, PortfolioSnapshot, ReadingStatus, RiskSnapshot
from qmp_deployer.engine.plan import PROBE_SOURCES, VAR_PREFIX, MetricSpec

SEEN_FILLS = 10_000
RISK_OK = "ok"


@dataclass(frozen=True)
class Reading:
    value: float | None
    status: ReadingStatus
    ts_ns: int = 0
    detail: str = ""


@dataclass
class _StrategyInputs:
    snapshot: RiskSnapshot | None = None
    slippage: deque[float] = field(default_factory=lambda: deque(maxlen=1_000))
    last_fill_ns: int = 0
    gross_exposure: float = 0.0


class Monitor:
    """Latest metric inputs per strategy, plus service-wide probes; fed by the handlers, read by the engine."""

    def __init__(self) -> None:
        self._inputs: dict[str, _StrategyInputs] = {}
        self._probes: dict[str, Reading] = {}
        self._seen_fills: RecentIds[tuple[str, str]] = RecentIds(SEEN_FILLS)

    def _of(self, strategy: str) -> _StrategyInputs:
        return self._inputs.setdefault(strategy, _StrategyInputs())

    def on_snapshot(self, snapshot: RiskSnapshot) -> None:
        inputs = self._of(snapshot.strategy)
        if inputs.snapshot is None or snapshot.ts_event >= inputs.snapshot.ts_event:
            inputs.snapshot = snapshot

    def on_fill(self, fill: Fill) -> bool:
        """Record a fill's slippage; return False for a fill already seen (a redelivery)."""
        if not self._seen_fills.first_time((fill.strategy, fill.fill_id)):
            return False
        inputs = self._of(fill.strategy)
        # Slippage is a cost whichever side it falls on: its size is what the gate watches.
        inputs.slippage.append(abs(fill.slippage_bps))
        inputs.last_fill_ns = max(inputs.last_fill_ns, fill.ts_event)
        return True

    def on_portfolio(self, portfolio: PortfolioSnapshot) -> None:
        self._of(portfolio.strategy).gross_exposure = portfolio.gross_exposure()

    def on_probe(self, source: str, value: float | None, ts_ns: int, detail: str = "") -> None:
        """Record a service-wide probe (latency_ms, memory_mb); None when the probe failed."""
        if source not in PROBE_SOURCES:
            raise ValueError(f"probe source must be one of {PROBE_SOURCES}, got {source!r}")
        status: ReadingStatus = "ok" if value is not None else "source_failed"
        self._probes[source] = Reading(value, status, ts_ns, detail)

    def gross_exposure(self, strategy: str) -> float:
        inputs = self._inputs.get(strategy)
        return inputs.gross_exposure if inputs else 0.0

    def var_book(self, key: str) -> dict[str, tuple[float, float]]:
        """Return strategy -> (VaR fraction, equity) for every strategy with a usable VaR under `key`."""
        book: dict[str, tuple[float, float]] = {}
        for strategy, inputs in self._inputs.items():
            snapshot = inputs.snapshot
            if snapshot is None or snapshot.status != RISK_OK:
                continue
            value = snapshot.var.get(key)
            if value is not None and math.isfinite(value) and math.isfinite(snapshot.equity):
                book[strategy] = (value, snapshot.equity)
        return book

    def reading(self, strategy: str, spec: MetricSpec, now_ns: int, allocation: float) -> Reading:
        """Return the current reading of one metric for a strategy."""
        source = spec.source
        if source in PROBE_SOURCES:
            reading = self._probes.get(source, Reading(None, "no_data", 0, f"no {source} probe yet"))
        elif source == "slippage_bps":
            reading = self._slippage(strategy, spec)
        else:
            reading = self._risk(strategy, source)
        if reading.value is not None and spec.stale_after_ns and now_ns - reading.ts_ns > spec.stale_after_ns:
            age_s = (now_ns - reading.ts_ns) / 1e9
            return Reading(None, "stale", reading.ts_ns, f"last {source} is {age_s:.0f}s old "
                                                         f"(limit {spec.stale_after_s:g}s)")
        if reading.value is not None and spec.per_allocation:
            if allocation <= 0.0:
                return Reading(None, "no_data", reading.ts_ns, "allocation is 0: no allocated capital to measure")
            reading = Reading(reading.value / allocation, reading.status, reading.ts_ns, reading.detail)
        return reading

    def _risk(self, strategy: str, source: str) -> Reading:
        inputs = self._inputs.get(strategy)
        snapshot = inputs.snapshot if inputs else None
        if snapshot is None:
            return Reading(None, "no_data", 0, "no risk snapshot yet")
        if source.startswith(VAR_PREFIX):
            if snapshot.status != RISK_OK:
                return Reading(None, "no_data", snapshot.ts_event, f"risk snapshot status {snapshot.status!r}")
            key = source[len(VAR_PREFIX):]
            value = snapshot.var.get(key)
            if value is None:
                return Reading(None, "no_data", snapshot.ts_event, f"risk snapshot has no VaR {key!r}")
        else:
            value = getattr(snapshot, source)
        if not math.isfinite(value):
            return Reading(None, "source_failed", snapshot.ts_event, f"{source} is {value}")
        return Reading(float(value), "ok", snapshot.ts_event)

    def _slippage(self, strategy: str, spec: MetricSpec) -> Reading:
        inputs = self._inputs.get(strategy)
        if inputs is None or not inputs.slippage:
            return Reading(None, "no_data", 0, "no fills yet")
        recent = list(inputs.slippage)[-spec.window:]
        return Reading(math.fsum(recent) / len(recent), "ok", inputs.last_fill_ns, f"mean of {len(recent)} fills")


def evaluate_gate(metric: str, spec: MetricSpec, reading: Reading, previous: GateResult | None) -> GateResult:
    """Return the metric's level: critical and warning are strict `>` breaches; no value is inconclusive."""
    streak = previous.consecutive_critical if previous is not None else 0
    value = reading.value
    if value is None or not math.isfinite(value):
        # Missing data neither clears nor extends a critical streak.
        level, value = "inconclusive", None
    elif value > spec.critical:
        level, streak = "critical", streak + 1
    elif value > spec.warning:
        level, streak = "warning", 0
    else:
        level, streak = "ok", 0
    return GateResult(metric=metric, level=level, value=value, warning=spec.warning, critical=spec.critical,
                      action=spec.action, reading=reading.status, consecutive_critical=streak,
                      ts_event=reading.ts_ns, detail=reading.detail)
