"""What the dashboard shows, read from the bus: each strategy's row, and the light form of a live message."""

from typing import Any

import msgspec
import nats
import nats.js.errors

from qmp_core import bus, subjects
from qmp_core.messages import (
    ControlApplied,
    PortfolioSnapshot,
    RiskSnapshot,
    RolloutState,
    codec,
    execution_events,
)
from qmp_core.rollout_state import phase_name
from qmp_lab.verify.gate import check_deployable, latest_verification
from qmp_ops.dashboard.store import Day, day_start_ns

SHOWN_MEASURE = "historical_99"  # the overview's VaR / ES column; the strategy's page has every method

_risk = codec(RiskSnapshot)
_portfolio = codec(PortfolioSnapshot)
_rollout = codec(RolloutState)
_applied = codec(ControlApplied)


def risk_row(snapshot: RiskSnapshot) -> dict[str, Any]:
    """The figures of a risk snapshot the overview shows."""
    return {"strategy": snapshot.strategy, "ts_event": snapshot.ts_event, "equity": snapshot.equity,
            "var_99": snapshot.var.get(SHOWN_MEASURE), "es_99": snapshot.es.get(SHOWN_MEASURE),
            "drawdown_24h": snapshot.drawdown_24h, "drawdown_max": snapshot.drawdown_max,
            "breakers": list(snapshot.breakers), "status": snapshot.status}


def portfolio_row(book: PortfolioSnapshot) -> dict[str, Any]:
    return {"strategy": book.strategy, "ts_event": book.ts_event, "equity": book.equity,
            "gross_exposure": book.gross_exposure(), "orders_total": book.orders_total,
            "denied_total": book.denied_total, "fills_total": book.fills_total}


def rollout_row(state: RolloutState) -> dict[str, Any]:
    return {"strategy": state.strategy, "phase": phase_name(state), "status": state.status,
            "allocation": state.allocation}


def deploy_gate(strategy: str) -> dict[str, Any]:
    """Whether `qmp deploy` / `qmp rollout promote` would let the strategy start a phase now, why, and its
    latest verification's tests (status, summary, when)."""
    deployable, why = check_deployable(strategy)
    record = latest_verification(strategy) or {}
    tests = {name: {k: test.get(k) for k in ("status", "summary", "verified_at", "quick")} | {
             "report": bool(test.get("report"))} for name, test in record.get("tests", {}).items()}
    return {"open": deployable, "why": why, "tests": tests}


def live_message(subject: str, data: bytes) -> tuple[str, dict[str, Any]] | None:
    """Return (kind, light row) for a message the page follows, or None for one it does not show."""
    parts = subject.split(".")
    try:
        if parts[:2] == ["qmp", "state"]:
            return "state", msgspec.json.decode(data)
        if parts[:2] == ["qmp", "risk"] and parts[-1] == "snapshot":
            return "risk", risk_row(_risk.decode(data))
        if parts[:2] == ["qmp", "exec"] and parts[-1] == "portfolio":
            return "portfolio", portfolio_row(_portfolio.decode(data))
        if parts[:2] == ["qmp", "deploy"] and parts[-1] == "events":
            return "deploy", msgspec.json.decode(data)
        if parts[:3] == ["qmp", "audit", "control"]:
            applied = _applied.decode(data)
            return "audit", {"strategy": applied.strategy, "command_id": applied.command.command_id,
                             "sender": applied.sender}
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # the services dead-letter what is malformed; the page shows what it can read
    return None


class Days:
    """Each strategy's day so far, kept current from its books in the order they are published: a book of a
    later day opens that day at the equity of the book before it."""

    def __init__(self, known: dict[str, Day]) -> None:
        self.known = known

    def on_book(self, strategy: str, ts_event: int, equity: float) -> float | None:
        """Take a book; return the strategy's PnL since its day began (None while unknown)."""
        start = day_start_ns(ts_event)
        day = self.known.get(strategy)
        if day is None:  # a strategy new to the database and the page: its day opens at its first book
            day = self.known[strategy] = Day(start_ns=start, open_equity=equity, equity=equity)
        elif start > day.start_ns:
            day.start_ns, day.open_equity = start, day.equity
        day.equity = equity
        return day.pnl()


async def _last(js: Any, stream: str, subject: str) -> bytes | None:
    try:
        return (await js.get_last_msg(stream, subject)).data
    except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
        return None


async def strategies_on_bus(nc: nats.NATS) -> set[str]:
    """Every strategy the bus knows: with a trading-state entry, a rollout or a published book."""
    js = nc.jetstream()
    names = set((await bus.read_control_entries(js)).strategies())
    try:
        info = await js.stream_info(subjects.STREAM_EXEC, subjects_filter=subjects.portfolio("*"))
        names |= {subject.split(".")[2] for subject in (info.state.subjects or {})}
    except nats.js.errors.NotFoundError:
        pass
    return {name for name in names if name != subjects.ALL_STRATEGIES}


async def overview(nc: nats.NATS, rollouts: dict[str, RolloutState]) -> dict[str, Any]:
    """Every strategy's row (trading state, rollout, book, risk) as the bus holds them now."""
    js = nc.jetstream()
    entries = await bus.read_control_entries(js)
    names = (await strategies_on_bus(nc)) | set(rollouts)
    rows = []
    for name in sorted(names):
        risk = await _last(js, subjects.STREAM_RISK, subjects.snapshot(name))
        book = await _last(js, subjects.STREAM_EXEC, subjects.portfolio(name))
        rows.append({
            "strategy": name,
            "state": msgspec.to_builtins(entries.effective(name)),
            "rollout": rollout_row(rollouts[name]) if name in rollouts else None,
            "risk": risk_row(_risk.decode(risk)) if risk else None,
            "portfolio": portfolio_row(_portfolio.decode(book)) if book else None,
            "gate": deploy_gate(name),
        })
    return {"strategies": rows}


RECENT_ORDERS = 50
ORDER_LOOKBACK = 20_000  # stream messages looked through for the latest decisions


async def recent_orders(nc: nats.NATS, strategy: str) -> list[dict[str, Any]]:
    """The strategy's latest order decisions (accepted and denied, with reason codes), newest first: one
    message each, or a replay's batches."""
    js = nc.jetstream()
    try:
        last = (await js.stream_info(subjects.STREAM_EXEC)).state.last_seq or 0
    except nats.js.errors.NotFoundError:
        return []
    found: list[dict[str, Any]] = []
    for subject in (subjects.orders(strategy), subjects.batch_events(strategy)):
        async for message in bus.read_stream(nc, subjects.STREAM_EXEC, subject,
                                             first_seq=max(1, last - ORDER_LOOKBACK)):
            try:
                decisions, _ = execution_events(message.subject, message.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            found.extend(msgspec.to_builtins(decision) for decision in decisions)
            del found[:-RECENT_ORDERS]
    return sorted(found, key=lambda order: order.get("ts_event", 0), reverse=True)[:RECENT_ORDERS]


async def strategy_detail(nc: nats.NATS, strategy: str) -> dict[str, Any]:
    """What the bus holds for one strategy's page: its state, its latest risk snapshot in full (every
    method's VaR / ES, their backtests), its book's exposure by symbol, its latest order decisions."""
    js = nc.jetstream()
    entries = await bus.read_control_entries(js)
    risk = await _last(js, subjects.STREAM_RISK, subjects.snapshot(strategy))
    book = await _last(js, subjects.STREAM_EXEC, subjects.portfolio(strategy))
    snapshot = _risk.decode(risk) if risk else None
    portfolio = _portfolio.decode(book) if book else None
    exposure = sorted(({"symbol": s, "quantity": q, "value": q * p}
                       for s, q, p in zip(portfolio.symbols, portfolio.quantities, portfolio.prices, strict=True)
                       if q), key=lambda row: -abs(row["value"])) if portfolio else []
    return {
        "strategy": strategy,
        "state": msgspec.to_builtins(entries.effective(strategy)),
        "risk": msgspec.to_builtins(snapshot) if snapshot else None,
        "portfolio": portfolio_row(portfolio) if portfolio else None,
        "exposure": exposure,
        "orders": await recent_orders(nc, strategy),
        "gate": deploy_gate(strategy),
    }
