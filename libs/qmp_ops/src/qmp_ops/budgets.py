"""Strategies' budgets on a running stack: their recorded daily returns in, allocation commands out.

`daily_returns` reads each strategy's equity curve (execution's `equity_curve` rows: paper and live books
alike), keeps the last equity of each UTC day and turns it into simple daily returns, one column a strategy
on the days they all have. `apply_budgets` sends each strategy's budget as a `set_allocation` control command
under the operator's credentials, through the same contract as `qmp` and the dashboard (each one is in the
audit trail with its sender), and returns the deployer's replies.
"""

from datetime import datetime
from typing import Any

import asyncpg
import pandas as pd

from qmp_ops.cli.control import send_control
from qmp_ops.runtime.supervisor import Connection

DAILY_EQUITY = """
SELECT strategy, date_trunc('day', ts AT TIME ZONE 'UTC') AS day, (array_agg(equity ORDER BY ts DESC))[1] AS equity
FROM equity_curve
WHERE strategy = ANY($1::text[]) AND ($2::timestamptz IS NULL OR ts >= $2)
GROUP BY strategy, day ORDER BY day
"""


async def daily_returns(database_url: str, strategies: list[str], since: datetime | None = None) -> pd.DataFrame:
    """Days × strategies of simple returns from each day's last equity; only days every strategy has."""
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await connection.fetch(DAILY_EQUITY, strategies, since)
    finally:
        await connection.close()
    if not rows:
        return pd.DataFrame(columns=strategies, dtype=float)
    equity = pd.DataFrame([dict(r) for r in rows]).pivot(index="day", columns="strategy", values="equity")
    missing = [s for s in strategies if s not in equity.columns]
    for name in missing:
        equity[name] = float("nan")
    return equity[strategies].pct_change(fill_method=None).iloc[1:].dropna()


async def apply_budgets(connection: Connection, weights: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Send each strategy's budget as its allocation; return strategy → the deployer's reply."""
    replies = {}
    for strategy, weight in weights.items():
        allocation = min(1.0, max(0.0, round(weight, 6)))
        replies[strategy] = await send_control(connection, strategy, {"command": "set_allocation",
                                                                      "allocation": allocation})
    return replies
