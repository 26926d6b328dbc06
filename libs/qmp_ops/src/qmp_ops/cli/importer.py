"""`qmp import`: historical bars from files into the stack's database, in parallel, validated, resumable.

    qmp import --source DIR_OR_FILE [--source ...] [--venue history] [--threads 8] [--chunk-rows 100000]
    qmp import --source exchange:binance --symbols BTC/USDT,ETH/USDT --start 2024-01-01 [--timeframe 1d]
    qmp import --source alpaca --symbols AAPL,MSFT --start 2024-01-01 [--bar-minutes 1]
"""

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from qmp_core.service import run_service
from qmp_ops.runtime.supervisor import Connection

if TYPE_CHECKING:
    from qmp_ops.venue_import import VenueSource

console = Console()


VENUE_SOURCES = ("alpaca", "exchange:<ccxt id>")
DOWNLOADS = Path(".qmp") / "imports"


def _venue_source(text: str, symbols: list[str], timeframe: str, bar_minutes: int, venue_url: str,
                  live: bool) -> "VenueSource | None":
    """The venue a `--source` names (`alpaca`, `exchange:binance`), or None for a file or directory."""
    from qmp_ops.venue_import import VenueSource

    kind, _, exchange = text.partition(":")
    if Path(text).exists() or kind not in ("alpaca", "exchange"):
        return None
    if kind == "exchange" and not exchange:
        raise typer.BadParameter("name the exchange: --source exchange:<ccxt id>, e.g. exchange:binance")
    if not symbols:
        raise typer.BadParameter(f"--source {text} needs --symbols (the venue's own names, e.g. BTC/USDT or AAPL)")
    env = os.environ.get
    return VenueSource(kind=kind, symbols=symbols, exchange_id=exchange or "binance", timeframe=timeframe,
                       minutes=bar_minutes, url=venue_url, sandbox=not live,
                       api_key=env("QMP_ALPACA_API_KEY", ""), secret_key=env("QMP_ALPACA_SECRET_KEY", ""),
                       secrets_file=env("QMP_ALPACA_SECRETS_FILE", ""))


def _day(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{option} {text!r} is not a date (YYYY-MM-DD) or an ISO time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def import_history(
    source: Annotated[list[str], typer.Option(help="a file (CSV, CSV.gz; Parquet with pyarrow) or a directory "
                                                   "of them, or a venue: `alpaca`, `exchange:<ccxt id>` (with "
                                                   "--symbols, --start); repeat for several")],
    venue: Annotated[str | None, typer.Option(help="the venue the bars are stored under (default: history for "
                                                   "files; alpaca, or the exchange's id)")] = None,
    threads: Annotated[int, typer.Option(min=1, max=64, help="files read and chunks written at once")] = 8,
    chunk_rows: Annotated[int, typer.Option(min=1_000, help="rows a chunk: the unit committed, and resumed "
                                                            "after an interruption")] = 100_000,
    symbols: Annotated[str, typer.Option(help="a venue source's symbols, comma-separated")] = "",
    start: Annotated[str | None, typer.Option(help="a venue source: the first bar's open (UTC date or time)")] = None,
    end: Annotated[str | None, typer.Option(help="a venue source: bars opened before this (default: now)")] = None,
    timeframe: Annotated[str, typer.Option(help="an exchange's bar length, as ccxt names it (1m, 1h, 1d)")] = "1d",
    bar_minutes: Annotated[int, typer.Option(min=1, help="Alpaca's bar length in minutes")] = 1,
    venue_url: Annotated[str, typer.Option(help="another base URL for the venue's API (a proxy, a fake)")] = "",
    live: Annotated[bool, typer.Option("--live", help="an exchange's live API, not its testnet")] = False,
) -> None:
    """Import historical bars into the stack's database: files read and written in parallel, each row checked
    with the collector's rules (bad rows become dead letters with their reason, file and line), committed in
    chunks so an interrupted import resumes where it stopped and a repeated one writes nothing twice. Long
    files (ts, symbol, open, high, low, close, volume) or one file per symbol (named after it). A venue source
    fetches each symbol's bars through the venue's client library (ccxt, alpaca-py; Alpaca's key from
    QMP_ALPACA_API_KEY / QMP_ALPACA_SECRET_KEY or QMP_ALPACA_SECRETS_FILE) into .qmp/imports/<venue>/, stamped
    at each bar's close as the collector's feed stamps them, and imports those files the same way."""
    from qmp_ops.history_import import ImportReport, SourceError, import_bars
    from qmp_ops.venue_import import import_from_venue
    from qmp_venues.bars import VenueFetchFailed
    from qmp_venues.credentials import CredentialsError

    names = [s.strip() for s in symbols.split(",") if s.strip()]
    venues = [(text, found) for text in source
              if (found := _venue_source(text, names, timeframe, bar_minutes, venue_url, live)) is not None]
    paths = [Path(text) for text in source if text not in {t for t, _ in venues}]
    if venues and (paths or len(venues) > 1):
        raise typer.BadParameter("one venue source at a time, without files")
    first, last = _day(start, "--start"), _day(end, "--end") or datetime.now(UTC)
    if venues and first is None:
        raise typer.BadParameter("a venue source needs --start")
    connection = Connection.read()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("import", total=0, unit="rows")

        def tick(done: int, added: int) -> None:
            if added:
                progress.update(task, total=(progress.tasks[task].total or 0) + added)
            if done:
                progress.advance(task, done)

        try:
            # uvloop, as the services: its TLS writes cost a fraction of asyncio's, and the COPY is all writes.
            if venues:
                (_, found), = venues
                venue = venue or (found.exchange_id if found.kind == "exchange" else "alpaca")
                asked = progress.add_task("fetch", total=len(found.symbols), unit="symbols")
                files, report = run_service(import_from_venue(
                    connection.database_url, found, first, last, venue, DOWNLOADS, threads=threads, progress=tick,
                    fetched=lambda symbol, bars: progress.advance(asked)))
                console.print(f"fetched {len(files)} of {len(found.symbols)} symbols from {escape(found.kind)} into "
                              f"{escape(str(DOWNLOADS / venue))}", highlight=False)
            else:
                venue = venue or "history"
                report = run_service(import_bars(connection.database_url, paths, venue, threads=threads,
                                                 chunk_rows=chunk_rows, progress=tick))
        except (SourceError, VenueFetchFailed, CredentialsError, ValueError) as error:
            console.print(f"[red]qmp import:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(1) from None
    assert isinstance(report, ImportReport)
    console.print(f"{report.files} files, {report.rows:,} rows in {report.seconds:.1f} s "
                  f"({report.rows_per_second:,.0f} rows/s): {report.imported:,} bars new under venue "
                  f"{escape(venue)}, {report.already_stored:,} stored already, {report.rejected:,} rejected "
                  f"(dead letters, service 'import'); {report.chunks_written} chunks written, "
                  f"{report.chunks_skipped} done by an earlier run", highlight=False, soft_wrap=True)
    for path, why in report.failed_files.items():
        console.print(f"[red]not imported:[/] {escape(path)}: {escape(why)}", highlight=False, soft_wrap=True)
    if report.failed_files:
        raise typer.Exit(1)
