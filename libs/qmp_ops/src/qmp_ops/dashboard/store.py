"""The dashboard's SQL: a strategy's curves, fills and audit trail from the stack's database."""

import json
from typing import Any

import asyncpg

CURVE_POINTS = 1500  # at most this many points a curve (every k-th snapshot of a long history)
RECENT = 50

CURVE = """
SELECT ts, equity, drawdown_24h, drawdown_max, var, es FROM (
    SELECT *, row_number() OVER (ORDER BY ts) AS n, count(*) OVER () AS total
    FROM risk_snapshots WHERE strategy = $1) numbered
WHERE (n - 1) % GREATEST(1, ceil(total::float8 / $2)::int) = 0 OR n = total
ORDER BY ts
"""
FILLS = """
SELECT ts, fill_id, order_id, symbol, side, quantity, price, arrival_price, slippage_bps, fee
FROM fills WHERE strategy = $1 ORDER BY ts DESC, fill_id DESC LIMIT $2
"""
AUDIT = """
SELECT ts, command_id, command, state, sender FROM control_audit WHERE strategy = $1 ORDER BY ts DESC, id DESC LIMIT $2
"""


def _epoch_ms(row: asyncpg.Record) -> int:
    return int(row["ts"].timestamp() * 1000)


async def strategy_records(database_url: str, strategy: str, measure: str) -> dict[str, Any]:
    """A strategy's equity / drawdown / VaR / ES curve (`measure`'s), latest fills and control audit trail."""
    connection = await asyncpg.connect(database_url, timeout=5)
    try:
        curve = await connection.fetch(CURVE, strategy, CURVE_POINTS)
        fills = await connection.fetch(FILLS, strategy, RECENT)
        audit = await connection.fetch(AUDIT, strategy, RECENT)
    finally:
        await connection.close()
    return {
        "curve": [{"t": _epoch_ms(r), "equity": r["equity"], "drawdown_24h": r["drawdown_24h"],
                   "drawdown_max": r["drawdown_max"], "var": json.loads(r["var"]).get(measure),
                   "es": json.loads(r["es"]).get(measure)} for r in curve],
        "fills": [{"t": _epoch_ms(r), **{k: r[k] for k in ("fill_id", "order_id", "symbol", "side", "quantity",
                                                            "price", "arrival_price", "slippage_bps", "fee")}}
                  for r in fills],
        "audit": [{"t": _epoch_ms(r), "command_id": r["command_id"], "command": json.loads(r["command"]),
                   "state": json.loads(r["state"]), "sender": r["sender"]} for r in audit],
    }
