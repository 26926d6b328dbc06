"""Execution's database writes: fills (with their cost records), the equity curve and positions per batch.

A batch is one call of the `execution_write_batch` function (migrations 0009, 0012) with each column as an array:
one round trip and one statement, so the batch lands whole or not at all, and a redelivered batch is a
no-op (its INSERTs skip rows that exist). This sits on a replay's critical path, once per batch, where
COPY through staging tables would cost six round trips (begin, three COPYs, the moves, commit).
"""

from collections.abc import Sequence
from typing import Any

import asyncpg

from qmp_core.clock import to_datetime
from qmp_execution.engine import StrategyResult

FILL_COLUMNS = ("ts", "strategy", "fill_id", "order_id", "symbol", "side", "quantity", "price", "arrival_price",
                "slippage_bps", "fee", "participation", "daily_vol", "adv", "remaining", "deployment_id",
                "model_slippage_bps")
EQUITY_COLUMNS = ("ts", "strategy", "cash", "equity", "realized_pnl", "unrealized_pnl", "fees", "gross_exposure",
                  "net_exposure", "positions", "working")
POSITION_COLUMNS = ("ts", "strategy", "symbol", "quantity", "price", "avg_price", "unrealized_pnl")


def rows_of(results: Sequence[StrategyResult]) -> dict[str, list[tuple[Any, ...]]]:
    """Return table -> rows for a batch's results."""
    fills: list[tuple[Any, ...]] = []
    equity: list[tuple[Any, ...]] = []
    positions: list[tuple[Any, ...]] = []
    for result in results:
        ts = to_datetime(result.ts_event)
        fills.extend((to_datetime(f.ts_event), f.strategy, f.fill_id, f.order_id, f.symbol, f.side, f.quantity, f.price,
                      f.arrival_price, f.slippage_bps, f.fee, f.participation, f.daily_vol, f.adv, f.remaining,
                      f.deployment_id, f.model_slippage_bps)
                     for f in result.fills)
        s = result.snapshot
        exposures = [q * p for q, p in zip(s.quantities, s.prices, strict=True)]
        equity.append((ts, s.strategy, s.cash, s.equity, s.realized_pnl, s.unrealized_pnl, s.fees,
                       sum(abs(x) for x in exposures), sum(exposures), len(s.symbols), len(s.working)))
        averages = s.avg_prices or s.prices
        positions.extend((ts, s.strategy, sym, q, p, a, q * (p - a))
                         for sym, q, p, a in zip(s.symbols, s.quantities, s.prices, averages, strict=True))
    return {"fills": fills, "equity_curve": equity, "positions": positions}


COLUMNS = {"fills": FILL_COLUMNS, "equity_curve": EQUITY_COLUMNS, "positions": POSITION_COLUMNS}
# The function's parameters: every column of every table, in COLUMNS' order.
WRITE_BATCH = ("SELECT execution_write_batch("
               + ", ".join(f"${i}" for i in range(1, sum(len(c) for c in COLUMNS.values()) + 1)) + ")")


def columns_of(rows: dict[str, list[tuple[Any, ...]]]) -> list[list[Any]]:
    """Return the function's arguments: each table's rows turned into one list per column."""
    arguments: list[list[Any]] = []
    for table, names in COLUMNS.items():
        table_rows = rows[table]
        arguments += [list(column) for column in zip(*table_rows, strict=True)] if table_rows else [
            [] for _ in names]
    return arguments


HAS_BATCH = "SELECT EXISTS (SELECT 1 FROM equity_curve WHERE strategy = $1 AND ts = $2)"


class ExecutionStore:
    """Writes a batch's fills and books in one statement; safe to repeat for the same batch."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.rows_written = 0

    async def has_batch(self, strategy: str, ts_event: int) -> bool:
        """Whether the rows of the strategy's batch at ts_event are stored (each batch writes an equity row)."""
        return bool(await self.pool.fetchval(HAS_BATCH, strategy, to_datetime(ts_event)))

    async def write(self, results: Sequence[StrategyResult]) -> None:
        rows = rows_of(results)
        written = sum(len(table_rows) for table_rows in rows.values())
        if not written:
            return
        await self.pool.execute(WRITE_BATCH, *columns_of(rows))
        self.rows_written += written


LATEST_CALIBRATION = (
    "SELECT half_spread_bps, eta, beta FROM slippage_calibrations WHERE strategy IN ('', $1) "
    "ORDER BY ts DESC, id DESC LIMIT 1"
)


async def latest_calibration(pool: asyncpg.Pool, strategy: str) -> asyncpg.Record | None:
    """Return the newest slippage calibration for the strategy (or for every strategy: ''), if any."""
    return await pool.fetchrow(LATEST_CALIBRATION, strategy)
