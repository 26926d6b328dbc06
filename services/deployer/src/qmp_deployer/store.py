"""The deployer's SQL: the deployment audit trail and the control, limits and account audits, idempotent on
replay."""

import asyncpg

from qmp_core.clock import to_datetime
from qmp_core.messages import AccountChanged, ControlApplied, DeploymentEvent, LimitsChanged, encode

INSERT_EVENT = (
    "INSERT INTO deployment_events (ts, strategy, rollout_id, seq, kind, phase_from, phase_to, status, trigger, "
    "issued_by, command_id, allocation_before, allocation_after, metrics, thresholds, reason, epoch) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb, $15::jsonb, $16, $17) "
    "ON CONFLICT DO NOTHING"
)
SEEN_COMMAND = "SELECT 1 FROM deployment_events WHERE strategy = $1 AND command_id = $2 LIMIT 1"
INSERT_LIMITS_AUDIT = (
    "INSERT INTO limits_audit (strategy, command_id, sender, reason, changed, before, after) "
    "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb) ON CONFLICT DO NOTHING"
)
SEEN_LIMITS = "SELECT 1 FROM limits_audit WHERE strategy = $1 AND command_id = $2"
INSERT_ACCOUNT_AUDIT = (
    "INSERT INTO account_audit (account, command_id, sender, reason, before, after) "
    "VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb) ON CONFLICT DO NOTHING"
)
SEEN_ACCOUNT = "SELECT 1 FROM account_audit WHERE account = $1 AND command_id = $2"
INSERT_CONTROL_AUDIT = (
    "INSERT INTO control_audit (strategy, command_id, command, state, sender) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT DO NOTHING"
)


async def write_deployment_event(pool: asyncpg.Pool, event: DeploymentEvent) -> None:
    await pool.execute(
        INSERT_EVENT, to_datetime(event.ts_event), event.strategy, event.rollout_id, event.seq, event.kind,
        event.phase_from, event.phase_to, event.status, event.trigger, event.issued_by, event.command_id,
        event.allocation_before, event.allocation_after, encode(event.metrics).decode(),
        encode(event.thresholds).decode(), event.reason, event.epoch,
    )


async def command_seen(pool: asyncpg.Pool, strategy: str, command_id: str) -> bool:
    """Return True when the audit trail already holds an event of this deploy command (applied once)."""
    return await pool.fetchval(SEEN_COMMAND, strategy, command_id) is not None


def _pg_json(message: object) -> str:
    """JSON for a jsonb column: PostgreSQL holds no NUL character, so an accepted command's `\\u0000` (a reason
    typed with one) is stored as U+FFFD; the stream keeps the command as it came. Without this, one such
    command failed every later start of the deployer (it writes the recent audit again at start)."""
    return encode(message).decode().replace("\\u0000", "\\ufffd")


async def write_control_audit(pool: asyncpg.Pool, records: list[ControlApplied]) -> None:
    await pool.executemany(
        INSERT_CONTROL_AUDIT,
        [(r.strategy, r.command.command_id, _pg_json(r.command), _pg_json(r.state), r.sender) for r in records],
    )


async def write_limits_change(pool: asyncpg.Pool, record: LimitsChanged) -> None:
    await pool.execute(INSERT_LIMITS_AUDIT, record.strategy, record.command_id or f"ts-{record.ts_event}",
                       record.sender, record.reason.replace("\x00", "\ufffd"), record.changed,
                       _pg_json(record.before), _pg_json(record.after))


async def limits_change_seen(pool: asyncpg.Pool, strategy: str, command_id: str) -> bool:
    """Return True when the limits audit already holds this request (applied once)."""
    return await pool.fetchval(SEEN_LIMITS, strategy, command_id) is not None


async def write_account_change(pool: asyncpg.Pool, record: AccountChanged) -> None:
    await pool.execute(INSERT_ACCOUNT_AUDIT, record.account, record.command_id or f"ts-{record.ts_event}",
                       record.sender, record.reason.replace("\x00", "\ufffd"),
                       _pg_json(record.before) if record.before is not None else None,
                       _pg_json(record.after) if record.after is not None else None)


async def account_change_seen(pool: asyncpg.Pool, account: str, command_id: str) -> bool:
    """Return True when the account audit already holds this request (applied once)."""
    return await pool.fetchval(SEEN_ACCOUNT, account, command_id) is not None
