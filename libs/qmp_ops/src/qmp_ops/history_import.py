"""`qmp import`: historical bars from files into the stack's `bars` table, in parallel, validated, resumable.

A source is a file or a directory of them (CSV, CSV.gz; Parquet where pyarrow is installed; the shapes of
`qmp_core.bar_files`: long, or one symbol per file). Each file is read in a worker thread, its rows checked
with the collector's rules (`qmp_core.validation`: finite prices within bounds, high >= low, open and close
within [low, high], a sane volume) and the import's own (a readable timestamp, not in the future, a symbol,
no bar twice in the file). A rejected row becomes a dead letter (`dead_letters`, service `import`, the file
and line as subject, the row as payload) and never stops the rows around it.

Rows go in chunks of `chunk_rows`, in file order. A chunk is encoded in PostgreSQL's binary COPY format in a
worker thread (numpy, no per-row Python) and written on one of `threads` connections in one transaction
with its dead letters and its line in `import_chunks`: an interrupted import resumes after the last chunk
committed, and one run again (the same file's SHA-256, venue and chunk size) skips every chunk. A chunk
whose bars are partly stored already (another file had them) goes through a staging table and `INSERT ...
ON CONFLICT DO NOTHING`, so no bar is ever written twice.
"""

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd

from qmp_core import subjects
from qmp_core.bar_files import NAT, VALUE_COLUMNS, BarColumns, is_long, long_columns, read_table
from qmp_core.clock import NS_PER_DAY
from qmp_core.validation import row_reasons

CHUNK_ROWS = 100_000
SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
COLUMNS = ("ts", "venue", "symbol", *VALUE_COLUMNS)
SERVICE = "import"  # the dead letters' service
FUTURE_TOLERANCE_NS = NS_PER_DAY  # a bar stamped later than a day from now is a corrupt timestamp
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds: PostgreSQL's timestamp origin
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"
DEADLOCK_RETRIES = 5
NO_SYMBOL = ("", "nan", "None")  # what an empty cell reads as
STAGE = """CREATE TEMP TABLE IF NOT EXISTS import_stage (LIKE bars INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"""
FROM_STAGE = f"INSERT INTO bars ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM import_stage " \
             "ON CONFLICT DO NOTHING"
RECORD_CHUNK = """
INSERT INTO import_chunks (sha256, venue, chunk_rows, chunk, chunks, source, rows, imported, rejected)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
DEAD_LETTER = "INSERT INTO dead_letters (service, subject, reason, payload) VALUES ($1, $2, $3, $4)"


class SourceError(ValueError):
    """A source that cannot be imported at all (not found, no file of a known kind); the message says why."""


@dataclass
class ImportReport:
    files: int = 0
    rows: int = 0  # rows read from the files (chunks done before included)
    imported: int = 0  # bars new in the table
    already_stored: int = 0  # valid bars the table held already
    rejected: int = 0  # rows dead-lettered
    chunks_written: int = 0
    chunks_skipped: int = 0  # committed by an earlier run
    seconds: float = 0.0
    failed_files: dict[str, str] = field(default_factory=dict)  # file -> why it could not be read

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class SourceFile:
    """A file's bars, checked: each row's rejection reason (None when it is good)."""

    path: Path
    sha256: str
    bars: BarColumns
    reasons: list[str | None]
    frame: pd.DataFrame  # the rows as read, for the dead letters' payload
    bad: np.ndarray  # the rejected rows, as a mask

    def chunks(self, chunk_rows: int) -> int:
        return max(1, -(-len(self.bars) // chunk_rows))


def source_files(source: Path) -> list[Path]:
    """Return the files a source names: itself, or the known kinds of file in a directory (sorted)."""
    if source.is_file():
        return [source]
    if source.is_dir():
        found = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
        if found:
            return found
        raise SourceError(f"{source} holds no {', '.join(SUFFIXES)} file")
    raise SourceError(f"{source} is neither a file nor a directory")


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def symbol_of(path: Path) -> str:
    """The symbol a one-symbol file is named after: `AAPL.csv` → AAPL, `BTC-USD.csv.gz` → BTC-USD."""
    return path.name.split(".")[0]


def read_source(path: Path, now_ns: int, sha256: str | None = None) -> SourceFile:
    """Read and check a file's bars (run in a worker thread); raise ValueError when the file is unreadable."""
    sha = sha256 or file_sha256(path)
    frame = read_table(path)
    bars = long_columns(frame, path, symbol=None if is_long(frame) else symbol_of(path), coerce=True)
    reasons = check_rows(bars, now_ns)
    bad = np.fromiter((reason is not None for reason in reasons), dtype=bool, count=len(reasons))
    return SourceFile(path, sha, bars, reasons, frame, bad)


def check_rows(bars: BarColumns, now_ns: int) -> list[str | None]:
    """Return each row's rejection reason, or None: the collector's bar rules, then the import's own."""
    v = bars.values
    reasons = row_reasons(v[:, 0], v[:, 1], v[:, 2], v[:, 3], v[:, 4])
    latest = now_ns + FUTURE_TOLERANCE_NS
    if len(bars) and (bars.symbols == bars.symbols[0]).all():  # one symbol (a file per symbol): cheap checks
        no_symbol = np.full(len(bars), str(bars.symbols[0]).strip() in NO_SYMBOL)
        repeated = pd.Index(bars.ts).duplicated(keep="first")
    else:
        no_symbol = pd.Series(bars.symbols, dtype=object).astype(str).str.strip().isin(NO_SYMBOL).to_numpy()
        repeated = pd.DataFrame({"symbol": bars.symbols, "ts": bars.ts}).duplicated(keep="first").to_numpy()
    checks = ((bars.ts == NAT, "unreadable timestamp"),
              ((bars.ts != NAT) & (bars.ts <= 0), "timestamp not after 1970-01-01"),
              (bars.ts > latest, "timestamp in the future (more than a day from now)"),
              (no_symbol, "no symbol"),
              (repeated, "the same symbol and timestamp earlier in the file"))
    # A bar without a time or a symbol, or a repeat, is nothing else: these reasons come first.
    own: list[str | None] = [None] * len(bars)
    for mask, reason in checks:
        for i in np.flatnonzero(mask):
            if own[i] is None:
                own[i] = reason
    return [mine if mine is not None else rule for mine, rule in zip(own, reasons, strict=True)]


def copy_binary(ts_ns: np.ndarray, venue: str, symbols: np.ndarray, values: np.ndarray) -> bytes:
    """Return the rows in PostgreSQL's binary COPY format, columns `COLUMNS`, built with numpy.

    Rows are fixed-width once the symbol's length is fixed, so rows are grouped by it (the table has no
    order) and each group is one structured array.
    """
    venue_bytes = venue.encode()
    if len(symbols) and (symbols == symbols[0]).all():  # a file per symbol: encode it once
        first = str(symbols[0]).encode()
        encoded = np.full(len(symbols), first, dtype=f"S{max(1, len(first))}")
        lengths = np.full(len(symbols), len(first), dtype=np.int64)
    else:
        encoded = np.char.encode(symbols.astype(str), "utf-8")
        lengths = np.char.str_len(encoded).astype(np.int64)
    micros = ts_ns // 1_000 - PG_EPOCH_US
    parts = [COPY_HEADER]
    for width in np.unique(lengths):
        rows = np.flatnonzero(lengths == width)
        layout = [("fields", ">i2"), ("ts_len", ">i4"), ("ts", ">i8"), ("venue_len", ">i4"),
                  ("venue", f"S{len(venue_bytes)}"), ("symbol_len", ">i4"), ("symbol", f"S{width}")]
        for name in VALUE_COLUMNS:
            layout += [(f"{name}_len", ">i4"), (name, ">f8")]
        out = np.empty(len(rows), dtype=np.dtype(layout))
        out["fields"], out["ts_len"], out["ts"] = len(COLUMNS), 8, micros[rows]
        out["venue_len"], out["venue"] = len(venue_bytes), venue_bytes
        out["symbol_len"], out["symbol"] = width, encoded[rows].astype(f"S{width}")
        for k, name in enumerate(VALUE_COLUMNS):
            out[f"{name}_len"], out[name] = 8, values[rows, k]
        parts.append(out.tobytes())
    parts.append(COPY_TRAILER)
    return b"".join(parts)


@dataclass(frozen=True)
class Chunk:
    """A chunk of a file, ready to write: its good bars in binary COPY format and its dead letters."""

    index: int
    rows: int  # the file's rows in the chunk, good and bad
    data: bytes
    good: int
    symbols: list[str]  # of the good bars, with their first and last time: where they fall in the table
    first_ns: int
    last_ns: int
    dead_letters: list[tuple[str, str, str, str]]


@dataclass(frozen=True)
class PreparedFile:
    """A file read, checked and encoded: what the writer needs, nothing more."""

    path: Path
    sha256: str
    rows: int
    chunks: int
    todo: list[Chunk]  # the chunks no earlier run committed


def prepare_file(path: Path, now_ns: int, sha256: str, venue: str, chunk_rows: int,
                 done: frozenset[int]) -> PreparedFile:
    """Read, check and encode a file's chunks but those in `done` (run in a worker thread)."""
    source = read_source(path, now_ns, sha256)
    total = len(source.bars)
    todo = []
    for index in range(source.chunks(chunk_rows)):
        if index in done:
            continue
        start, stop = index * chunk_rows, min(total, (index + 1) * chunk_rows)
        bad = source.bad[start:stop]
        good = start + np.flatnonzero(~bad)
        ts = source.bars.ts[good]
        symbols = source.bars.symbols[good]
        letters = [(SERVICE, f"{path.name}:{i + 2}", str(source.reasons[i]),  # line i + 2: the header is line 1
                    json.dumps({str(k): str(v) for k, v in source.frame.iloc[i].items()}))
                   for i in start + np.flatnonzero(bad)]
        todo.append(Chunk(index, stop - start, copy_binary(ts, venue, symbols, source.bars.values[good]), len(good),
                          sorted(set(symbols.tolist())), int(ts.min()) if len(ts) else 0,
                          int(ts.max()) if len(ts) else 0, letters))
    return PreparedFile(path, sha256, total, source.chunks(chunk_rows), todo)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    """The COPY's data as an async iterable: asyncpg reads a file object in a worker thread, this in place."""
    yield data


OVERLAP = """
SELECT EXISTS (SELECT 1 FROM bars WHERE venue = $1 AND symbol = ANY($2::text[])
               AND ts BETWEEN to_timestamp($3::float8 / 1e9) AND to_timestamp($4::float8 / 1e9))
"""


async def _write(connection: asyncpg.Connection, prepared: PreparedFile, chunk: Chunk, venue: str,
                 chunk_rows: int) -> tuple[int, int] | None:
    """Write a chunk's bars, dead letters and record in one transaction; return (new bars, rejected), or None
    when another import committed the chunk first.

    Straight COPY when the table holds none of the chunk's symbols within its time range (the usual import
    into an empty range); through the staging table otherwise, or when such bars appear meanwhile (the COPY
    then fails whole and the transaction is run again staged).
    """
    staged = bool(chunk.good) and await connection.fetchval(
        OVERLAP, venue, chunk.symbols, chunk.first_ns - 1_000, chunk.last_ns + 1_000)
    for _ in range(2):
        try:
            async with connection.transaction():
                new = 0
                if chunk.good and not staged:
                    await connection.copy_to_table("bars", source=_once(chunk.data), columns=COLUMNS,
                                                   format="binary")
                    new = chunk.good
                elif chunk.good:
                    await connection.execute(STAGE)
                    await connection.copy_to_table("import_stage", source=_once(chunk.data), columns=COLUMNS,
                                                   format="binary")
                    new = int((await connection.execute(FROM_STAGE)).rsplit(" ", 1)[-1])
                if chunk.dead_letters:
                    await connection.executemany(DEAD_LETTER, chunk.dead_letters)
                await connection.execute(RECORD_CHUNK, prepared.sha256, venue, chunk_rows, chunk.index,
                                         prepared.chunks, str(prepared.path), chunk.rows, new,
                                         len(chunk.dead_letters))
            return new, len(chunk.dead_letters)
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name == "import_chunks_pkey":
                return None  # another import committed this chunk first
            staged = True  # bars of the chunk were stored meanwhile
    raise RuntimeError(f"chunk {chunk.index} of {prepared.path} met stored bars even through the staging table")


async def _write_batch(connection: asyncpg.Connection, batch: list[tuple[PreparedFile, Chunk]], venue: str,
                       chunk_rows: int) -> list[tuple[int, int]] | None:
    """Write several chunks (of one file or several) in one COPY and one transaction, when the table holds none
    of their bars; return each chunk's (new bars, rejected), or None for the caller to write them one by one
    (some bars stored already, or a chunk committed by another import)."""
    chunks = [chunk for _, chunk in batch if chunk.good]
    if chunks and await connection.fetchval(
            OVERLAP, venue, sorted({s for chunk in chunks for s in chunk.symbols}),
            min(chunk.first_ns for chunk in chunks) - 1_000, max(chunk.last_ns for chunk in chunks) + 1_000):
        return None
    body = b"".join(chunk.data[len(COPY_HEADER):-len(COPY_TRAILER)] for chunk in chunks)
    letters = [letter for _, chunk in batch for letter in chunk.dead_letters]
    try:
        async with connection.transaction():
            if chunks:
                await connection.copy_to_table("bars", source=_once(COPY_HEADER + body + COPY_TRAILER),
                                               columns=COLUMNS, format="binary")
            if letters:
                await connection.executemany(DEAD_LETTER, letters)
            await connection.executemany(RECORD_CHUNK, [
                (prepared.sha256, venue, chunk_rows, chunk.index, prepared.chunks, str(prepared.path), chunk.rows,
                 chunk.good, len(chunk.dead_letters)) for prepared, chunk in batch])
    except asyncpg.UniqueViolationError:
        return None
    return [(chunk.good, len(chunk.dead_letters)) for _, chunk in batch]


async def import_bars(database_url: str, sources: Iterable[Path], venue: str, threads: int = 8,
                      chunk_rows: int = CHUNK_ROWS, now_ns: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Import every file of `sources` into `bars` under `venue`; return what happened.

    `threads` files are prepared at once (read, checked and encoded in worker threads) and written by as
    many writers on as many connections. A writer joins the chunks waiting (small files' chunks) into one
    COPY of at least `chunk_rows` rows, one transaction. Worker processes were measured too: they free the
    GIL but cost more CPU than they save where PostgreSQL needs the cores. `progress(rows_done,
    rows_added_to_total)` is called as the work grows and is done. A file that cannot be read is reported
    in `failed_files`; the others go on.
    """
    venue = subjects.check_token(venue, "venue")
    now = now_ns if now_ns is not None else time.time_ns()
    paths = [path for source in sources for path in source_files(source)]
    report = ImportReport(files=len(paths))
    started = time.perf_counter()
    preparing = asyncio.Semaphore(threads)
    ready: asyncio.Queue[tuple[PreparedFile, Chunk] | None] = asyncio.Queue(maxsize=2 * threads)
    tick = progress or (lambda done, total: None)
    # No wait for each chunk's commit to reach the disk: a chunk is committed with its record, so one lost
    # in a crash is simply not recorded, and written again on resume.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=threads,
                                     server_settings={"synchronous_commit": "off"})
    assert pool is not None

    def account(chunk: Chunk, written: tuple[int, int] | None) -> None:
        if written is None:
            report.chunks_skipped += 1
        else:
            new, rejected = written
            report.imported += new
            report.rejected += rejected
            report.already_stored += chunk.good - new
            report.chunks_written += 1
        tick(chunk.rows, 0)

    async def write_one(connection: asyncpg.Connection, prepared: PreparedFile, chunk: Chunk) -> None:
        for attempt in range(DEADLOCK_RETRIES):
            try:
                account(chunk, await _write(connection, prepared, chunk, venue, chunk_rows))
                return
            except asyncpg.DeadlockDetectedError:  # two chunks sharing bars, locked in opposite orders
                if attempt == DEADLOCK_RETRIES - 1:
                    raise

    async def writer() -> None:
        while (item := await ready.get()) is not None:
            batch, rows = [item], item[1].rows
            while rows < chunk_rows:  # join what waits already, up to a chunk's worth
                try:
                    more = ready.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if more is None:
                    ready.put_nowait(None)  # the end, for the next get: room, as one was just taken
                    break
                batch.append(more)
                rows += more[1].rows
            async with pool.acquire() as connection:
                results = await _write_batch(connection, batch, venue, chunk_rows) if len(batch) > 1 else None
                if results is None:
                    for prepared, chunk in batch:
                        await write_one(connection, prepared, chunk)
                else:
                    for (_, chunk), written in zip(batch, results, strict=True):
                        account(chunk, written)

    async def one_file(path: Path) -> None:
        async with preparing:
            try:
                sha = await asyncio.to_thread(file_sha256, path)
            except OSError as error:
                report.failed_files[str(path)] = str(error)
                return
            async with pool.acquire() as connection:
                records = await connection.fetch(
                    "SELECT chunk, chunks, rows FROM import_chunks WHERE sha256 = $1 AND venue = $2 AND "
                    "chunk_rows = $3", sha, venue, chunk_rows)
            done = {r["chunk"]: r["rows"] for r in records}
            if records and len(done) == records[0]["chunks"]:  # imported whole before: not even read
                rows = sum(done.values())
                report.rows += rows
                report.chunks_skipped += len(done)
                tick(rows, rows)
                return
            try:
                prepared = await asyncio.to_thread(prepare_file, path, now, sha, venue, chunk_rows, frozenset(done))
            except ValueError as error:
                report.failed_files[str(path)] = str(error)
                return
            report.rows += prepared.rows
            report.chunks_skipped += len(done)
            tick(sum(done.values()), prepared.rows)
            for chunk in prepared.todo:  # waits while the writers are behind: memory stays bounded
                await ready.put((prepared, chunk))

    writers = [asyncio.create_task(writer(), name=f"import-writer-{k}") for k in range(threads)]
    readers = asyncio.ensure_future(asyncio.gather(*(one_file(path) for path in paths)))
    try:
        # A writer ends before the readers only by failing (the database refused, the caller's progress
        # raised): that ends the import at once.
        await asyncio.wait([readers, *writers], return_when=asyncio.FIRST_COMPLETED)
        for task in writers:
            if task.done():
                await task  # raises what the writer met
        await readers
        for _ in writers:
            await ready.put(None)
        await asyncio.gather(*writers)
    finally:
        for task in [readers, *writers]:
            task.cancel()
        await asyncio.gather(readers, *writers, return_exceptions=True)
        await pool.close()
    report.seconds = time.perf_counter() - started
    return report
