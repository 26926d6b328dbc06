"""`qmp import`: historical bars from files into the stack's database, in parallel, validated, resumable.

    qmp import --source DIR_OR_FILE [--source ...] [--venue history] [--threads 8] [--chunk-rows 100000]
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from qmp_core.service import run_service
from qmp_ops.runtime.supervisor import Connection

console = Console()


def import_history(
    source: Annotated[list[Path], typer.Option(help="a file (CSV, CSV.gz; Parquet with pyarrow) or a directory "
                                                    "of them; repeat for several")],
    venue: Annotated[str, typer.Option(help="the venue the bars are stored under")] = "history",
    threads: Annotated[int, typer.Option(min=1, max=64, help="files read and chunks written at once")] = 8,
    chunk_rows: Annotated[int, typer.Option(min=1_000, help="rows a chunk: the unit committed, and resumed "
                                                            "after an interruption")] = 100_000,
) -> None:
    """Import historical bars into the stack's database: files read and written in parallel, each row checked
    with the collector's rules (bad rows become dead letters with their reason, file and line), committed in
    chunks so an interrupted import resumes where it stopped and a repeated one writes nothing twice. Long
    files (ts, symbol, open, high, low, close, volume) or one file per symbol (named after it)."""
    from qmp_ops.history_import import SourceError, import_bars

    connection = Connection.read()
    columns = (TextColumn("[bold]import"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("import", total=0)

        def tick(done: int, added: int) -> None:
            if added:
                progress.update(task, total=(progress.tasks[0].total or 0) + added)
            if done:
                progress.advance(task, done)

        try:
            # uvloop, as the services: its TLS writes cost a fraction of asyncio's, and the COPY is all writes.
            report = run_service(import_bars(connection.database_url, source, venue, threads=threads,
                                             chunk_rows=chunk_rows, progress=tick))
        except (SourceError, ValueError) as error:
            console.print(f"[red]qmp import:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(1) from None
    console.print(f"{report.files} files, {report.rows:,} rows in {report.seconds:.1f} s "
                  f"({report.rows_per_second:,.0f} rows/s): {report.imported:,} bars new under venue "
                  f"{escape(venue)}, {report.already_stored:,} stored already, {report.rejected:,} rejected "
                  f"(dead letters, service 'import'); {report.chunks_written} chunks written, "
                  f"{report.chunks_skipped} done by an earlier run", highlight=False, soft_wrap=True)
    for path, why in report.failed_files.items():
        console.print(f"[red]not imported:[/] {escape(path)}: {escape(why)}", highlight=False, soft_wrap=True)
    if report.failed_files:
        raise typer.Exit(1)
