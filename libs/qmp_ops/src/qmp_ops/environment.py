"""What a stack's database is for (production or test), and the data it holds: the SQL of `qmp init --env`
and `qmp db clear-test-data`.

A database is tagged once: production by `qmp init --env production`, test by `qmp up` (its embedded
database) or `qmp init --env test`. A production database is never cleared and never tagged test again.
"""

import asyncpg

# Tables that hold trading data (what a test run leaves behind), oldest schema first; never the migrations.
DATA_TABLES = ("bars", "fills", "equity_curve", "positions", "risk_snapshots", "breaker_events", "control_audit",
               "limits_audit", "deployment_events", "slippage_calibrations", "dead_letters", "import_chunks")
TAG = "SELECT environment FROM qmp_environment"
SET_TAG = """
INSERT INTO qmp_environment (environment) VALUES ($1)
ON CONFLICT (id) DO UPDATE SET environment = EXCLUDED.environment, tagged_at = now()
"""


class WrongEnvironment(RuntimeError):
    """The database is not for what was asked (production data to clear, another environment's data)."""


async def tag(connection: asyncpg.Connection) -> str | None:
    return await connection.fetchval(TAG)


async def populated(connection: asyncpg.Connection) -> dict[str, int]:
    """Each data table that holds rows, with a count (capped at 1,000: enough to say it is not empty)."""
    counts: dict[str, int] = {}
    for table in DATA_TABLES:
        rows = await connection.fetchval(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1000) AS held")
        if rows:
            counts[table] = rows
    return counts


async def set_environment(connection: asyncpg.Connection, environment: str, allow_other_data: bool = False) -> None:
    """Tag the database; refuse to make production of a database holding other data (unless allowed), or
    test of a production one."""
    current = await tag(connection)
    if environment == current:
        return
    if current == "production":
        raise WrongEnvironment("this database is tagged production: it is never tagged test again")
    held = await populated(connection)
    if environment == "production" and held and not allow_other_data:
        tables = ", ".join(f"{table} ({rows}{'+' if rows == 1000 else ''} rows)" for table, rows in held.items())
        raise WrongEnvironment(f"this database holds data of {'a test run' if current == 'test' else 'unknown'} "
                               f"origin: {tables}. Run against an empty database, clear it first (`qmp db "
                               f"clear-test-data --confirm` on a test database), or pass --allow-test-data")
    await connection.execute(SET_TAG, environment)


async def clear_test_data(connection: asyncpg.Connection) -> dict[str, int]:
    """Delete every row of the data tables of a test database, in one transaction; return the rows deleted."""
    current = await tag(connection)
    if current != "test":
        raise WrongEnvironment(f"this database is tagged {current or 'nothing'}: only a test database is cleared "
                               "(`qmp init --env test` tags one)")
    deleted: dict[str, int] = {}
    async with connection.transaction():
        for table in DATA_TABLES:
            status = await connection.execute(f"DELETE FROM {table}")
            deleted[table] = int(status.rsplit(" ", 1)[-1])
    return deleted
