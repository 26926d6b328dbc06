"""Backup and restore of what a stack keeps: the database's tables, and the trading-state and rollout buckets.

A backup is a directory: `tables/<table>.bin` (each table's rows in PostgreSQL's binary COPY format, read
with the services' own driver, so TLS and any server version work with no client program installed),
`buckets.json` (every key of `qmp_control` and `qmp_rollouts` with its value) and `manifest.json` (when,
the migrations applied, each table's columns and row count, each bucket's keys, each file's SHA-256).

Verification migrates a scratch database on the same server, loads the backup into it and compares the
row counts with the manifest, so a backup is known to restore before it is needed. A restore migrates the
target to the same migrations, replaces every table's rows in one transaction and moves each id sequence
past the restored ids; the buckets are shown, not written (see `restore`). The streams (market data,
orders, fills, the audit) are not in it: the tables hold what they record.
"""

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
from nats.js.errors import BucketNotFoundError

from qmp_core import subjects
from qmp_core.db import migrate

BUCKETS = (subjects.KV_CONTROL, subjects.KV_ROLLOUTS, subjects.KV_LIMITS)
WATCH_TIMEOUT_S = 10.0
SERIAL_COLUMNS = (
    "SELECT table_name, column_name, pg_get_serial_sequence(quote_ident(table_name), column_name) AS seq "
    "FROM information_schema.columns WHERE table_schema = 'public' AND column_default LIKE 'nextval%'"
)


class BackupError(RuntimeError):
    """A backup that cannot be made, verified or restored; the message says what and why."""


def with_database(url: str, database: str) -> str:
    """Return the URL with another database name (the same server, user and TLS settings)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def _tables(connection: asyncpg.Connection) -> dict[str, list[str]]:
    rows = await connection.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public') "
        "ORDER BY table_name, ordinal_position")
    tables: dict[str, list[str]] = {}
    for row in rows:
        tables.setdefault(row["table_name"], []).append(row["column_name"])
    return tables


async def _counts(connection: asyncpg.Connection, tables: list[str]) -> dict[str, int]:
    return {t: int(await connection.fetchval(f'SELECT count(*) FROM "{t}"')) for t in tables}


async def export_buckets(nc: nats.NATS) -> dict[str, dict[str, str]]:
    """Return every live key of the buckets with its value (one pass over each bucket's stream)."""
    js = nc.jetstream()
    out: dict[str, dict[str, str]] = {}
    for bucket in BUCKETS:
        values: dict[str, str] = {}
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            out[bucket] = values
            continue
        watcher = await kv.watchall(ignore_deletes=True)
        try:
            while (entry := await watcher.updates(timeout=WATCH_TIMEOUT_S)) is not None:
                if entry.value is not None:
                    values[entry.key] = entry.value.decode()
        finally:
            await watcher.stop()
        out[bucket] = values
    return out


async def backup(nc: nats.NATS, database_url: str, out: Path) -> dict[str, Any]:
    """Write a backup into `out` (created; must be empty); return its manifest."""
    _empty_directory(out / "tables")
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):  # one moment for all
            tables = await _tables(connection)
            counts = await _counts(connection, list(tables))
            migrations = [r["name"] for r in await connection.fetch("SELECT name FROM schema_migrations ORDER BY name")]
            for table, columns in tables.items():
                await connection.copy_from_table(table, columns=columns, output=str(out / "tables" / f"{table}.bin"),
                                                 format="binary")
    finally:
        await connection.close()
    buckets = await export_buckets(nc)
    (out / "buckets.json").write_text(json.dumps(buckets, indent=2, sort_keys=True))
    files = [f"tables/{t}.bin" for t in tables] + ["buckets.json"]
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "migrations": migrations,
                "tables": {t: {"rows": counts[t], "columns": tables[t]} for t in tables},
                "buckets": {bucket: sorted(values) for bucket, values in buckets.items()},
                "sha256": {name: _sha256(out / name) for name in files}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def _empty_directory(path: Path) -> None:
    root = path.parent
    if root.exists() and any(root.iterdir()):
        raise BackupError(f"{root} is not empty: a backup goes into a directory of its own")
    path.mkdir(parents=True)


def read_manifest(directory: Path) -> dict[str, Any]:
    """Return the backup's manifest once every file matches its checksum; raise BackupError otherwise."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as error:
        raise BackupError(f"{directory} holds no readable manifest.json: {error}") from error
    for name, expected in manifest["sha256"].items():
        path = directory / name
        if not path.exists() or _sha256(path) != expected:
            raise BackupError(f"{path} is missing or changed since the backup (its SHA-256 differs)")
    return manifest


async def _load(directory: Path, manifest: dict[str, Any], database_url: str) -> dict[str, int]:
    """Migrate the database, replace its tables' rows with the backup's in one transaction; return the counts."""
    await migrate(database_url)
    connection = await asyncpg.connect(database_url)
    try:
        known = {r["name"] for r in await connection.fetch("SELECT name FROM schema_migrations")}
        unknown = sorted(set(manifest["migrations"]) - known)
        if unknown:
            raise BackupError(f"the backup was taken with migrations this QMP does not have: {unknown}")
        tables = manifest["tables"]
        async with connection.transaction():
            await connection.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
            for table, spec in tables.items():
                await connection.copy_to_table(table, source=str(directory / "tables" / f"{table}.bin"),
                                               columns=spec["columns"], format="binary")
            for row in await connection.fetch(SERIAL_COLUMNS):
                if row["seq"] and row["table_name"] in tables:  # the next id comes after the restored ones
                    await connection.execute(
                        f"SELECT setval($1, COALESCE((SELECT max(\"{row['column_name']}\") FROM "
                        f"\"{row['table_name']}\"), 0) + 1, false)", row["seq"])
        counts = await _counts(connection, list(tables))
    finally:
        await connection.close()
    differing = {t: (spec["rows"], counts.get(t)) for t, spec in tables.items() if counts.get(t) != spec["rows"]}
    if differing:
        raise BackupError(f"the tables differ from the backup's manifest (table: backed up, now): {differing}")
    return counts


async def verify(directory: Path, database_url: str) -> dict[str, int]:
    """Load the backup into a scratch database on the same server; return its row counts, raise on any
    difference with the manifest. The scratch database is dropped afterwards."""
    manifest = read_manifest(directory)
    scratch = f"qmp_verify_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{scratch}"')
    finally:
        await admin.close()
    try:
        return await _load(directory, manifest, with_database(database_url, scratch))
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        finally:
            await admin.close()


async def restore(directory: Path, database_url: str) -> dict[str, int]:
    """Put the backup's tables back: every table's rows replaced by the backup's. Return the row counts
    after it. Stop the services first: they would write meanwhile.

    The buckets are not written back: the trading state changes only through the deployer's control
    contract, audited (an operator's credentials cannot write the bucket, by design). `held_states` lists
    what the backup held, for the operator to issue again (`qmp halt ...`) where it still applies.
    """
    return await _load(directory, read_manifest(directory), database_url)


def held_states(directory: Path) -> list[dict[str, Any]]:
    """Return the backup's trading-state entries that were not plainly ACTIVE (halted, reduced, safe mode)."""
    entries = json.loads((directory / "buckets.json").read_text()).get(subjects.KV_CONTROL, {})
    out = []
    for key, value in sorted(entries.items()):
        try:
            state = json.loads(value)
        except ValueError:
            continue
        if state.get("status", "ACTIVE") != "ACTIVE" or state.get("safe_mode") or \
                state.get("size_multiplier", 1.0) != 1.0:
            defaults = {"status": "ACTIVE", "reason": "", "size_multiplier": 1.0, "safe_mode": False}
            out.append({"key": key, **{k: state.get(k, default) for k, default in defaults.items()}})
    return out
