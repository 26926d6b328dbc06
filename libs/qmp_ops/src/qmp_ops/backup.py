"""Backup and restore of what a stack keeps: the database's tables, the JetStream streams, the buckets.

A backup is a directory:
- `tables/<table>.bin`: each table's rows in PostgreSQL's binary COPY format, read with the services' own
  driver, so TLS and any server version work with no client program installed;
- `streams/<stream>.snapshot` and `streams/<stream>.json`: each QMP stream (market data, ingest, orders
  and fills, risk, the audit trail, deployment events, dead letters) as nats-server's own snapshot
  (`$JS.API.STREAM.SNAPSHOT`: messages with their sequence numbers and times, and the durable consumers'
  positions), and the stream's configuration and state when it was taken;
- `buckets.json`: every key of the trading-state, rollout and limits buckets with its value;
- `manifest.json`: when, the migrations applied, each table's columns, row count and checksum, each
  stream's message count, sequence range and checksum, each bucket's keys, each file's SHA-256.

A table's checksum is order-free (the sum of a 64-bit hash of each row's text), so the same rows give the
same checksum on any server whatever their physical order. A stream's checksum hashes its messages in
sequence order (sequence, subject, headers, data); it is taken from the snapshot itself, restored into a
scratch nats-server, after checking that the restored stream holds what the live one said it held.

Verification loads the backup into a scratch database on the same server and a scratch nats-server and
compares counts and checksums with the manifest, so a backup is known to restore before it is needed. A
restore migrates the target to the same migrations, replaces every table's rows in one transaction, moves
each id sequence past the restored ids, and replaces each stream with its snapshot; with `verify` it then
compares the stack's tables and streams with the manifest. The buckets are shown, not written (see
`restore`).
"""

import asyncio
import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
from nats.js.errors import BucketNotFoundError, NotFoundError

from qmp_core import bus, subjects
from qmp_core.db import migrate

BUCKETS = (subjects.KV_CONTROL, subjects.KV_ROLLOUTS, subjects.KV_LIMITS)
WATCH_TIMEOUT_S = 10.0
SERIAL_COLUMNS = (
    "SELECT table_name, column_name, pg_get_serial_sequence(quote_ident(table_name), column_name) AS seq "
    "FROM information_schema.columns WHERE table_schema = 'public' AND column_default LIKE 'nextval%'"
)


# The session settings that decide how a row prints as text, which its checksum hashes: fixed, so the
# same rows hash alike on any server and any client.
TEXT_SETTINGS = ("SET TIME ZONE 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'postgres'",
                 "SET extra_float_digits = 1", "SET bytea_output = 'hex'")
SNAPSHOT_CHUNK_BYTES = 128 * 1024
SNAPSHOT_TIMEOUT_S = 30.0
# Headers a direct get adds to a stored message (where it sits, what is left): not part of the message.
READ_HEADERS = frozenset({"Nats-Stream", "Nats-Sequence", "Nats-Subject", "Nats-Num-Pending", "Nats-Last-Sequence",
                          "Nats-UpTo-Sequence"})


class BackupError(RuntimeError):
    """A backup that cannot be made, verified or restored; the message says what and why."""


def with_database(url: str, database: str) -> str:
    """Return the URL with another database name (the same server, user and TLS settings)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


async def _tables(connection: asyncpg.Connection) -> dict[str, list[str]]:
    rows = await connection.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public') "
        "ORDER BY table_name, ordinal_position")
    tables: dict[str, list[str]] = {}
    for row in rows:
        tables.setdefault(row["table_name"], []).append(row["column_name"])
    return tables


async def table_checksums(connection: asyncpg.Connection, tables: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Return each table's row count and checksum (the sum of a 64-bit hash of each row's text: order-free)."""
    for setting in TEXT_SETTINGS:
        await connection.execute(setting)
    out: dict[str, dict[str, Any]] = {}
    for table in tables:
        row = await connection.fetchrow(
            f"SELECT count(*) AS rows, COALESCE(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint), 0)::text "
            f'AS checksum FROM "{table}" t')
        out[table] = {"rows": int(row["rows"]), "checksum": row["checksum"]}
    return out


async def stream_checksum(nc: nats.NATS, stream: str) -> dict[str, Any]:
    """Return the stream's message count, first and last sequence and the SHA-256 of its messages in order."""
    digest = hashlib.sha256()
    count, first, last = 0, 0, 0
    async for message in bus.read_stream(nc, stream, ">"):
        headers = sorted((k, v) for k, v in message.headers.items() if k not in READ_HEADERS)
        digest.update(json.dumps([message.seq, message.subject, headers]).encode())
        digest.update(len(message.data).to_bytes(8, "little"))
        digest.update(message.data)
        count, first, last = count + 1, first or message.seq, message.seq
    return {"messages": count, "first_seq": first, "last_seq": last, "sha256": digest.hexdigest()}


async def snapshot_stream(nc: nats.NATS, stream: str, path: Path) -> dict[str, Any]:
    """Write the stream's snapshot (nats-server's own format) to `path`; return its configuration and state.

    The server sends the snapshot in chunks to an inbox, each waiting for an acknowledgement (its flow
    control), and ends with an empty message whose status says whether it completed.
    """
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        request = {"deliver_subject": inbox, "chunk_size": SNAPSHOT_CHUNK_BYTES}
        reply = json.loads((await nc.request(f"$JS.API.STREAM.SNAPSHOT.{stream}", json.dumps(request).encode(),
                                             timeout=SNAPSHOT_TIMEOUT_S)).data)
        if "error" in reply:
            raise BackupError(f"stream {stream} could not be snapshotted: {reply['error'].get('description')}")
        with path.open("wb") as handle:
            while True:
                try:
                    chunk = await sub.next_msg(timeout=SNAPSHOT_TIMEOUT_S)
                except TimeoutError as error:
                    raise BackupError(f"the snapshot of stream {stream} stopped coming") from error
                if not chunk.data:
                    status = (chunk.headers or {}).get("Status", "204")
                    if status != "204":
                        raise BackupError(f"the snapshot of stream {stream} failed: {status} "
                                          f"{(chunk.headers or {}).get('Description', '')}")
                    break
                handle.write(chunk.data)
                if chunk.reply:
                    await nc.publish(chunk.reply, b"")
    finally:
        await sub.unsubscribe()
    return {"config": reply["config"], "state": reply["state"]}


async def restore_stream(nc: nats.NATS, stream: str, path: Path, taken: dict[str, Any]) -> dict[str, Any]:
    """Replace the stream by its snapshot (deleted first when it exists); return the restored stream's state."""
    try:
        await nc.jetstream().delete_stream(stream)
    except NotFoundError:
        pass
    reply = json.loads((await nc.request(f"$JS.API.STREAM.RESTORE.{stream}", json.dumps(taken).encode(),
                                         timeout=SNAPSHOT_TIMEOUT_S)).data)
    if "error" in reply:
        raise BackupError(f"stream {stream} could not be restored: {reply['error'].get('description')}")
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(SNAPSHOT_CHUNK_BYTES), b""):
            await nc.request(reply["deliver_subject"], chunk, timeout=SNAPSHOT_TIMEOUT_S)
    done = json.loads((await nc.request(reply["deliver_subject"], b"", timeout=SNAPSHOT_TIMEOUT_S * 4)).data)
    if "error" in done:
        raise BackupError(f"stream {stream} could not be restored: {done['error'].get('description')}")
    return done["state"]


async def _existing_streams(nc: nats.NATS, names: Iterable[str]) -> list[str]:
    js = nc.jetstream()
    out = []
    for name in names:
        try:
            await js.stream_info(name)
        except NotFoundError:
            continue
        out.append(name)
    return out


async def _scratch_nats_checksums(directory: Path, streams: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Restore each stream's snapshot into a scratch nats-server of its own; return each restored stream's
    checksum. The server runs on loopback without users for the moment it takes, then goes with its files."""
    from qmp_ops.runtime.nats_server import EmbeddedNats  # the runtime's server, imported only when used

    with tempfile.TemporaryDirectory(prefix="qmp-backup-nats-") as scratch_dir:
        server = EmbeddedNats(Path(scratch_dir), with_auth=False, tls=False)
        await asyncio.to_thread(server.start)
        try:
            nc = await nats.connect(server.credentials.url)
            try:
                out = {}
                for stream in streams:
                    taken = json.loads((directory / "streams" / f"{stream}.json").read_text())
                    await restore_stream(nc, stream, directory / "streams" / f"{stream}.snapshot", taken)
                    out[stream] = await stream_checksum(nc, stream)
                return out
            finally:
                await nc.close()
        finally:
            await asyncio.to_thread(server.stop)


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
    """Write a backup into `out` (created; must be empty); return its manifest.

    The tables are read in one repeatable-read transaction (one moment for all of them); each stream's
    snapshot is one moment of that stream. A stack may keep running meanwhile.
    """
    _empty_directory(out / "tables")
    (out / "streams").mkdir()
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):  # one moment for all
            tables = await _tables(connection)
            checksums = await table_checksums(connection, tables)
            migrations = [r["name"] for r in await connection.fetch("SELECT name FROM schema_migrations ORDER BY name")]
            for table, columns in tables.items():
                await connection.copy_from_table(table, columns=columns, output=str(out / "tables" / f"{table}.bin"),
                                                 format="binary")
    finally:
        await connection.close()
    streams: dict[str, dict[str, Any]] = {}
    for stream in await _existing_streams(nc, (config.name for config in bus.STREAMS)):
        taken = await snapshot_stream(nc, stream, out / "streams" / f"{stream}.snapshot")
        (out / "streams" / f"{stream}.json").write_text(json.dumps(taken, indent=2, sort_keys=True))
        streams[stream] = taken["state"]
    restored = await _scratch_nats_checksums(out, streams)
    for stream, state in streams.items():  # the snapshot holds what the live stream said it held
        held = restored[stream]
        said = (state["messages"], state["first_seq"] if state["messages"] else 0,
                state["last_seq"] if state["messages"] else 0)
        if (held["messages"], held["first_seq"], held["last_seq"]) != said:
            raise BackupError(f"the snapshot of stream {stream} restores {held['messages']} messages "
                              f"({held['first_seq']}..{held['last_seq']}), the stream held {said[0]} "
                              f"({said[1]}..{said[2]})")
    buckets = await export_buckets(nc)
    (out / "buckets.json").write_text(json.dumps(buckets, indent=2, sort_keys=True))
    files = ([f"tables/{t}.bin" for t in tables] + ["buckets.json"]
             + [f"streams/{s}.{suffix}" for s in streams for suffix in ("snapshot", "json")])
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "migrations": migrations,
                "tables": {t: {**checksums[t], "columns": tables[t]} for t in tables},
                "streams": restored,
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


def _differences(kind: str, expected: dict[str, dict[str, Any]], found: dict[str, dict[str, Any]],
                 keys: tuple[str, ...]) -> None:
    """Raise BackupError naming every table or stream whose count or checksum differs from the manifest's."""
    differing = {}
    for name, spec in expected.items():
        want = {k: spec[k] for k in keys if k in spec}  # a backup made before checksums has counts only
        got = {k: found.get(name, {}).get(k) for k in want}
        if got != want:
            differing[name] = {"backed up": want, "now": got}
    if differing:
        raise BackupError(f"{kind} differ from the backup's manifest: {json.dumps(differing, sort_keys=True)}")


async def _load(directory: Path, manifest: dict[str, Any], database_url: str) -> dict[str, dict[str, Any]]:
    """Migrate the database, replace its tables' rows with the backup's in one transaction; return each
    table's row count and checksum, raising BackupError when one differs from the manifest."""
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
        checksums = await table_checksums(connection, tables)
    finally:
        await connection.close()
    _differences("the tables", tables, checksums, ("rows", "checksum"))
    return checksums


def _compare_streams(manifest: dict[str, Any], found: dict[str, dict[str, Any]]) -> None:
    _differences("the streams", manifest.get("streams", {}), found, ("messages", "first_seq", "last_seq", "sha256"))


async def verify(directory: Path, database_url: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Load the backup into a scratch database on the same server and its streams into a scratch nats-server;
    return what they hold (`tables`, `streams`: counts and checksums), raising BackupError on any difference
    with the manifest. The scratch database and server are gone afterwards."""
    manifest = read_manifest(directory)
    scratch = f"qmp_verify_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{scratch}"')
    finally:
        await admin.close()
    try:
        tables = await _load(directory, manifest, with_database(database_url, scratch))
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        finally:
            await admin.close()
    streams = await _scratch_nats_checksums(directory, manifest.get("streams", {}))
    _compare_streams(manifest, streams)
    return {"tables": tables, "streams": streams}


async def restore(directory: Path, database_url: str, nc: nats.NATS, verify: bool = True) -> (
        dict[str, dict[str, dict[str, Any]]]):
    """Put the backup back: every table's rows and every stream replaced by the backup's. Return what the
    stack holds after it (`tables`, `streams`); with `verify`, raise BackupError where a stream's count or
    checksum differs from the manifest (the tables are always compared). Stop the services first: they
    would write meanwhile, and their durable consumers come back at the backup's positions.

    The buckets are not written back: the trading state changes only through the deployer's control
    contract, audited (an operator's credentials cannot write the bucket, by design). `held_states` lists
    what the backup held, for the operator to issue again (`qmp halt ...`) where it still applies.
    """
    manifest = read_manifest(directory)
    tables = await _load(directory, manifest, database_url)
    streams = {}
    for stream in manifest.get("streams", {}):
        taken = json.loads((directory / "streams" / f"{stream}.json").read_text())
        state = await restore_stream(nc, stream, directory / "streams" / f"{stream}.snapshot", taken)
        streams[stream] = await stream_checksum(nc, stream) if verify else {"messages": state["messages"]}
    if verify:
        _compare_streams(manifest, streams)
    return {"tables": tables, "streams": streams}


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
