"""The dashboard's SQL: a strategy's curves, VaR exceptions, fills and audit trail; each strategy's day so far
and the person who set its trading state, from the stack's database."""

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from qmp_core.clock import NS_PER_DAY, to_ns

CURVE_POINTS = 1500  # at most this many points a curve (every k-th snapshot of a long history)
RECENT = 50

CURVE = """
SELECT ts, equity, drawdown_24h, drawdown_max, var, es FROM (
    SELECT *, row_number() OVER (ORDER BY ts) AS n, count(*) OVER () AS total
    FROM risk_snapshots WHERE strategy = $1) numbered
WHERE (n - 1) % GREATEST(1, ceil(total::float8 / $2)::int) = 0 OR n = total
ORDER BY ts
"""
# A day whose loss (the backtest's hypothetical return, risk_snapshots.realized_return) went beyond the VaR
# forecast the snapshot before it: the same rule as the risk service's backtest kernel, -r > VaR.
EXCEPTIONS = """
SELECT ts, loss, var_before FROM (
    SELECT ts, -realized_return AS loss, lag((var ->> $2)::float8) OVER (ORDER BY ts) AS var_before
    FROM risk_snapshots WHERE strategy = $1) paired
WHERE loss > var_before ORDER BY ts DESC LIMIT $3
"""
FILLS = """
SELECT ts, fill_id, order_id, symbol, side, quantity, price, arrival_price, slippage_bps, model_slippage_bps, fee
FROM fills WHERE strategy = $1 ORDER BY ts DESC, fill_id DESC LIMIT $2
"""
AUDIT = """
SELECT ts, command_id, command, state, sender FROM control_audit WHERE strategy = $1 ORDER BY ts DESC, id DESC LIMIT $2
"""


# Each strategy's latest book and its equity when its day (UTC, event time) began: the last book of the day
# before, or the day's first book for a strategy that started that day.
DAY_OPEN = """
SELECT latest.strategy, latest.ts, latest.equity, COALESCE(
    (SELECT equity FROM equity_curve e WHERE e.strategy = latest.strategy AND e.ts < latest.day
     ORDER BY e.ts DESC LIMIT 1),
    (SELECT equity FROM equity_curve e WHERE e.strategy = latest.strategy AND e.ts >= latest.day
     ORDER BY e.ts LIMIT 1)) AS day_open
FROM (SELECT DISTINCT ON (strategy) strategy, ts, equity,
             date_trunc('day', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day
      FROM equity_curve WHERE strategy = ANY($1::text[]) ORDER BY strategy, ts DESC) latest
"""
SENDERS = """
SELECT strategy, command_id, sender FROM control_audit
WHERE (strategy, command_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""
EXCEPTIONS_SHOWN = 500


def _epoch_ms(row: asyncpg.Record) -> int:
    return int(row["ts"].timestamp() * 1000)


async def strategy_records(database_url: str, strategy: str, measure: str) -> dict[str, Any]:
    """A strategy's equity / drawdown / VaR / ES curve (`measure`'s) with the exceptions of that VaR, latest fills
    (realized slippage and the model's) and control audit trail."""
    connection = await asyncpg.connect(database_url, timeout=5)
    try:
        curve = await connection.fetch(CURVE, strategy, CURVE_POINTS)
        exceptions = await connection.fetch(EXCEPTIONS, strategy, measure, EXCEPTIONS_SHOWN)
        fills = await connection.fetch(FILLS, strategy, RECENT)
        audit = await connection.fetch(AUDIT, strategy, RECENT)
    finally:
        await connection.close()
    return {
        "curve": [{"t": _epoch_ms(r), "equity": r["equity"], "drawdown_24h": r["drawdown_24h"],
                   "drawdown_max": r["drawdown_max"], "var": json.loads(r["var"]).get(measure),
                   "es": json.loads(r["es"]).get(measure)} for r in curve],
        "measure": measure,
        "exceptions": [{"t": _epoch_ms(r), "loss": r["loss"], "var": r["var_before"]} for r in reversed(exceptions)],
        "fills": [{"t": _epoch_ms(r), **{k: r[k] for k in ("fill_id", "order_id", "symbol", "side", "quantity",
                                                            "price", "arrival_price", "slippage_bps",
                                                            "model_slippage_bps", "fee")}}
                  for r in fills],
        "audit": [{"t": _epoch_ms(r), "command_id": r["command_id"], "command": json.loads(r["command"]),
                   "state": json.loads(r["state"]), "sender": r["sender"]} for r in audit],
    }


@dataclass
class Day:
    """A strategy's day so far: when it began (ns, UTC midnight of event time), its equity then, the latest."""

    start_ns: int
    open_equity: float | None
    equity: float

    def pnl(self) -> float | None:
        return None if self.open_equity is None else self.equity - self.open_equity


async def overview_records(database_url: str, states: dict[str, str]) -> tuple[dict[str, Day], dict[str, str]]:
    """Each strategy's day so far, and who sent the command behind its trading state (`states`: strategy -> the
    state's command id). A person's command is audited with the NATS user that sent it."""
    connection = await asyncpg.connect(database_url, timeout=5)
    try:
        days = await connection.fetch(DAY_OPEN, list(states))
        asked = [(strategy, command_id) for strategy, command_id in states.items() if command_id]
        senders = await connection.fetch(SENDERS, [a[0] for a in asked], [a[1] for a in asked])
    finally:
        await connection.close()
    by_strategy = {r["strategy"]: Day(start_ns=day_start_ns(to_ns(r["ts"])),
                                      open_equity=r["day_open"], equity=r["equity"]) for r in days}
    return by_strategy, {r["strategy"]: r["sender"] for r in senders if r["sender"]}


def day_start_ns(ts_event: int) -> int:
    return ts_event - ts_event % NS_PER_DAY
