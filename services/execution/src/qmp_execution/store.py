"""Execution's database writes: fills (with their cost records), the equity curve and positions per batch.

Bulk rows go through COPY into a session-local staging table, then one INSERT ... ON CONFLICT DO NOTHING
into the real table, in one transaction per batch: COPY's speed with the idempotency a redelivered batch
needs (COPY alone would fail on the first duplicate key).
"""

import weakref
from collections.abc import Sequence
from typing import Any

import asyncpg

from qmp_core.clock import to_datetime
from qmp_execution.engine import StrategyResult

FILL_COLUMNS = ("ts", "strategy", "fill_id", "order_id", "symbol", "side", "quantity", "price", "arrival_price",
                "slippage_bps", "fee", "participation", "daily_vol", "adv", "remaining", "deployment_id")
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
                      f.deployment_id)
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


class ExecutionStore:
    """Writes a batch's fills and books in one transaction; safe to repeat for the same batch.

    A batch costs few round trips: the staging tables are created once per connection (temporary tables
    live as long as the session, and `ON COMMIT DELETE ROWS` empties them), and the three moves from
    staging into the real tables go as one multi-statement query.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.rows_written = 0
        self._staged: weakref.WeakSet[Any] = weakref.WeakSet()  # connections that have the staging tables

    async def write(self, results: Sequence[StrategyResult]) -> None:
        tables = {table: rows for table, rows in rows_of(results).items() if rows}
        if not tables:
            return
        async with self.pool.acquire() as connection:
            session = getattr(connection, "_con", connection)  # the pool hands out a proxy of the session
            if session not in self._staged:
                # Outside the batch's transaction, so that a batch rolled back cannot take the tables with it.
                # Table and column names are constants of this module, never input: no injection path.
                await connection.execute("; ".join(
                    f"CREATE TEMP TABLE IF NOT EXISTS staging_{table} (LIKE {table}) ON COMMIT DELETE ROWS"
                    for table in COLUMNS))
                self._staged.add(session)
            async with connection.transaction():
                for table, rows in tables.items():
                    await connection.copy_records_to_table(f"staging_{table}", records=rows,
                                                           columns=list(COLUMNS[table]))
                await connection.execute("; ".join(
                    f"INSERT INTO {table} ({', '.join(COLUMNS[table])}) SELECT {', '.join(COLUMNS[table])} "
                    f"FROM staging_{table} ON CONFLICT DO NOTHING" for table in tables))
        self.rows_written += sum(len(rows) for rows in tables.values())


LATEST_CALIBRATION = (
    "SELECT half_spread_bps, eta, beta FROM slippage_calibrations WHERE strategy IN ('', $1) "
    "ORDER BY ts DESC, id DESC LIMIT 1"
)


async def latest_calibration(pool: asyncpg.Pool, strategy: str) -> asyncpg.Record | None:
    """Return the newest slippage calibration for the strategy (or for every strategy: ''), if any."""
    return await pool.fetchrow(LATEST_CALIBRATION, strategy)
