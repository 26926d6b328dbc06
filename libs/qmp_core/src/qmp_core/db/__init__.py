"""asyncpg pool and forward-only SQL migrations; TimescaleDB hypertables when the extension is there."""

from qmp_core.db.migrate import connect_pool, has_timescale, migrate

__all__ = ["connect_pool", "has_timescale", "migrate"]
