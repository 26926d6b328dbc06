"""The dashboard's figures from a real PostgreSQL: VaR exceptions marked by the backtest's rule, fills set against the
slippage model, each strategy's PnL since its day began (on loading and as books arrive) and the person who set its
trading state."""

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from qmp_core.clock import NS_PER_DAY, NS_PER_HOUR, to_ns
from qmp_core.messages import ControlApplied, Halt, TradingState, encode
from qmp_ops.dashboard.store import overview_records, strategy_records
from qmp_ops.dashboard.views import Days, live_message

pytestmark = pytest.mark.integration

DAY0 = datetime(2024, 3, 4, tzinfo=UTC)


async def _risk_rows(db: asyncpg.Connection, strategy: str, rows: list[tuple[float, float | None]]) -> None:
    """One snapshot a day: (its historical_99 VaR, the return it realized)."""
    for i, (var, realized) in enumerate(rows):
        await db.execute(
            "INSERT INTO risk_snapshots (ts, strategy, equity, var, es, drawdown_24h, drawdown_max, volatility_ratio, "
            "breakers, realized_return) VALUES ($1, $2, 1e6, $3, $3, 0, 0, 1, '{}', $4)",
            DAY0 + timedelta(days=i), strategy, json.dumps({"historical_99": var, "normal_99": var / 2}), realized)


async def test_strategy_records_when_losses_beyond_the_var_before_then_those_days_are_the_exceptions(
        database_url: str, unique_id: str) -> None:
    db = await asyncpg.connect(database_url)
    try:
        # day 1 loses 3% against a 2% VaR (an exception); day 2 loses 2.5% against 4% (none; but against the other
        # method's 2%, one); day 3 loses 2.5% against 2%; day 4 is no observation (None); day 5's gain is never one.
        await _risk_rows(db, unique_id, [(0.02, None), (0.04, -0.03), (0.02, -0.025), (0.03, -0.025),
                                         (0.03, None), (0.03, 0.05)])
        await db.execute(
            "INSERT INTO fills (ts, strategy, fill_id, order_id, symbol, side, quantity, price, arrival_price, "
            "slippage_bps, fee, model_slippage_bps) VALUES ($1, $2, 'f1', 'o1', 'A', 'BUY', 10, 100.2, 100, 20, 0, 12)",
            DAY0, unique_id)
    finally:
        await db.close()

    records = await strategy_records(database_url, unique_id, "historical_99")
    by_half = await strategy_records(database_url, unique_id, "normal_99")

    day = 86_400_000
    start = int(DAY0.timestamp() * 1000)
    assert [(e["t"], e["loss"], e["var"]) for e in records["exceptions"]] == [
        (start + day, 0.03, 0.02), (start + 3 * day, 0.025, 0.02)]
    assert [e["t"] for e in by_half["exceptions"]] == [start + day, start + 2 * day, start + 3 * day]
    assert records["measure"] == "historical_99" and len(records["curve"]) == 6
    (fill,) = records["fills"]
    assert (fill["slippage_bps"], fill["model_slippage_bps"]) == (20.0, 12.0)


async def _books(db: asyncpg.Connection, strategy: str, books: list[tuple[datetime, float]]) -> None:
    for ts, equity in books:
        await db.execute(
            "INSERT INTO equity_curve (ts, strategy, cash, equity, realized_pnl, unrealized_pnl, fees, gross_exposure, "
            "net_exposure, positions, working) VALUES ($1, $2, 0, $3, 0, 0, 0, 0, 0, 0, 0)", ts, strategy, equity)


async def test_overview_records_when_books_span_days_then_pnl_since_the_day_began_and_the_sender_of_the_state(
        database_url: str, unique_id: str) -> None:
    older, newer, quiet = unique_id + "a", unique_id + "b", unique_id + "c"
    db = await asyncpg.connect(database_url)
    try:
        # `older` closed day 0 at 1,010 and is at 1,004 at 15:00 of day 1 (its day began at midnight: -6);
        # `newer` started at 10:00 of day 1 with 500 and is at 530 (its first book opens its day: +30).
        await _books(db, older, [(DAY0 + timedelta(hours=16), 1_000.0), (DAY0 + timedelta(hours=23), 1_010.0),
                                 (DAY0 + timedelta(days=1), 1_020.0), (DAY0 + timedelta(days=1, hours=15), 1_004.0)])
        await _books(db, newer, [(DAY0 + timedelta(days=1, hours=10), 500.0),
                                 (DAY0 + timedelta(days=1, hours=12), 530.0)])
        await db.execute("INSERT INTO control_audit (strategy, command_id, command, state, sender) "
                         "VALUES ($1, 'c-1', '{}', '{}', 'alice'), ($1, 'c-0', '{}', '{}', 'bob')", older)
    finally:
        await db.close()

    days, senders = await overview_records(database_url, {older: "c-1", newer: "", quiet: "c-1"})

    assert days[older].pnl() == pytest.approx(-6.0) and days[newer].pnl() == pytest.approx(30.0)
    assert days[older].start_ns == to_ns(DAY0) + NS_PER_DAY and quiet not in days
    assert senders == {older: "alice"}  # the state's own command; another strategy's id names no one

    # Live: the books that follow keep the figure, a book of the next day opening it at the last equity.
    live = Days(days)
    next_day = to_ns(DAY0) + 2 * NS_PER_DAY
    assert live.on_book(older, next_day - NS_PER_HOUR, 1_015.0) == pytest.approx(5.0)
    assert live.on_book(older, next_day + NS_PER_HOUR, 1_012.0) == pytest.approx(-3.0)
    assert live.on_book(quiet, next_day, 700.0) == 0.0  # first seen: its day opens at that book


def test_live_message_when_a_command_is_audited_then_its_sender_is_read_for_the_state_it_set() -> None:
    halt = Halt(reason="why", command_id="c-9", issued_by="operator")
    applied = ControlApplied(strategy="s1", command=halt, state=TradingState(strategy="s1", status="HALTED"),
                             ts_event=1, sender="alice")
    assert live_message("qmp.audit.control.s1", encode(applied)) == (
        "audit", {"strategy": "s1", "command_id": "c-9", "sender": "alice"})
    assert live_message("qmp.audit.control.s1", b"{not json") is None


async def test_records_when_the_database_is_away_then_the_overview_goes_on_without_them() -> None:
    from qmp_ops.dashboard.server import Session, _records
    from qmp_ops.runtime.ports import free_port
    from qmp_ops.runtime.supervisor import Connection

    away = Connection(nats_url="nats://127.0.0.1:1", database_url=f"postgresql://qmp@127.0.0.1:{free_port()}/qmp",
                      run_dir="")
    assert await _records(Session("alice", away, None, 0.0), {"s1": "c-1"}) == ({}, {})  # type: ignore[arg-type]
