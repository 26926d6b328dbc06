"""Forward-only migrations: `migrations/NNNN_name.sql`, applied once each, in order, under an advisory lock.

A file may hold a `-- timescale:` section: run only where the timescaledb extension is available (it
turns the time-first tables into hypertables); plain PostgreSQL keeps its time-first indexes.
"""

from importlib import resources

import asyncpg

MIGRATION_LOCK = 7_431_001
TIMESCALE_MARK = "-- timescale:"


async def connect_pool(database_url: str, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size)
    if pool is None:
        raise RuntimeError(f"could not create a database pool for {database_url}")
    return pool


async def has_timescale(connection: asyncpg.Connection) -> bool:
    available = await connection.fetchval(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    return bool(available)


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("qmp_core.db") / "migrations"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


async def migrate(database_url: str) -> list[str]:
    """Apply pending migrations; return the names applied now."""
    connection = await asyncpg.connect(database_url)
    applied_now: list[str] = []
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations")}
        timescale = await has_timescale(connection)
        for name, sql in migration_files():
            if name in done:
                continue
            plain, _, timescale_sql = sql.partition(TIMESCALE_MARK)
            async with connection.transaction():
                await connection.execute(plain)
                if timescale and timescale_sql.strip():
                    await connection.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                    await connection.execute(timescale_sql)
                await connection.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied_now.append(name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        await connection.close()
    return applied_now
