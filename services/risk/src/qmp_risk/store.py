"""Risk's database writes: one row per risk snapshot and per breaker event, idempotent on redelivery."""

from typing import Any

import asyncpg
import msgspec

from qmp_core.clock import to_datetime
from qmp_core.messages import BreakerEvent, RiskSnapshot

INSERT_SNAPSHOT = (
    "INSERT INTO risk_snapshots (ts, strategy, equity, var, es, drawdown_24h, drawdown_max, volatility_ratio, "
    "breakers, status, observations, drawdown, positions, backtests, errors, realized_return) VALUES ($1, $2, $3, "
    "$4::jsonb, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14::jsonb, $15::jsonb, $16) "
    "ON CONFLICT DO NOTHING"
)
INSERT_BREAKER_EVENT = (
    "INSERT INTO breaker_events (ts, strategy, breaker, event, value, threshold, action, detail) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class RiskStore:
    """Writes through a pool opened by the service; a redelivered message writes nothing new."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def write_snapshot(self, snapshot: RiskSnapshot) -> None:
        await self.pool.execute(
            INSERT_SNAPSHOT, to_datetime(snapshot.ts_event), snapshot.strategy, snapshot.equity,
            _json(snapshot.var), _json(snapshot.es), snapshot.drawdown_24h, snapshot.drawdown_max,
            snapshot.volatility_ratio, snapshot.breakers, snapshot.status, snapshot.observations, snapshot.drawdown,
            _json(snapshot.positions), _json(snapshot.backtests), _json(snapshot.errors), snapshot.realized_return,
        )

    async def write_breaker_event(self, event: BreakerEvent) -> None:
        await self.pool.execute(INSERT_BREAKER_EVENT, to_datetime(event.ts_event), event.strategy, event.breaker,
                                type(event).__name__, event.value, event.threshold, event.action, event.detail)
