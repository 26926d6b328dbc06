"""`qmp demo`: replay 2007-2009 through the whole stack and report."""

import asyncio
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qmp_core.clock import iso_date
from qmp_core.datasets import load_sp500_index
from qmp_ops.cli.report import Summary, summarize, write_report
from qmp_ops.replay import RunObserver, follow
from qmp_ops.runtime.supervisor import Stack, StackOptions

DEMO_STRATEGY = "vol_target"
DEMO_STRATEGY_PATH = "qmp_lab.strategies.vol_target:VolatilityTarget"
# The strategy needs a year of prices before its first trade (trend filter and volatility estimate): the
# replay starts this many trading days early so that it is invested when the reported period begins.
WARMUP_DAYS = 260


def warmup_start(start: str) -> str:
    """Return the date WARMUP_DAYS trading days before start in the bundled history."""
    days = load_sp500_index(None, start).index
    return str(days[max(0, len(days) - 1 - WARMUP_DAYS)].date())


def demo_options(start: str, end: str, home: Path) -> StackOptions:
    return StackOptions(
        home=home,
        clock="replay",
        fresh=True,
        share_connection=False,  # a running `qmp up` keeps its connection file
        service_env={
            "collector": {"QMP_SOURCE": "history", "QMP_VENUE": "sp500", "QMP_START": start, "QMP_END": end,
                          "QMP_REPLAY_RATE": "0", "QMP_LOCKSTEP_STRATEGY": DEMO_STRATEGY},
            # one message per batch for its orders and fills: a replay has no plain client reading each
            "execution": {"QMP_STRATEGIES": f"{DEMO_STRATEGY}={DEMO_STRATEGY_PATH}", "QMP_ORDER_EVENTS": "per_batch"},
        },
    )


def run_demo(console: Console, start: str, end: str, home: Path, reports: Path) -> Summary:
    """Start the stack, follow the replay with a progress bar, stop it, print and write the report."""
    benchmark = load_sp500_index(start, end).iloc[:, 0]
    replay_start = warmup_start(start)
    stack = Stack(demo_options(replay_start, end, home))
    try:
        with console.status("starting NATS and PostgreSQL…"):
            connection = stack.start_servers()
        console.print(f"replaying {replay_start} → {end}; the report covers {start} → {end} "
                      f"(the first {WARMUP_DAYS} days warm the strategy up)")
        observer = asyncio.run(_follow(stack, console, len(load_sp500_index(replay_start, end))))
    finally:
        with console.status("stopping services and servers…"):
            stack.stop()
    summary = summarize(observer, benchmark)
    folder = reports / f"demo-{time.strftime('%Y%m%dT%H%M%S')}"
    path = write_report(folder, observer, summary, benchmark)
    table = Table(title=f"QMP demo: {DEMO_STRATEGY} through {start} → {end}")
    table.add_column("measure")
    table.add_column("value")
    for name, value in summary.rows():
        table.add_row(name, value)
    console.print(table)
    console.print(f"report: {path}  (chart: {path.parent / 'report.png'})")
    console.print(f"run directory (logs, traces): {connection.run_dir}")
    return summary


async def _follow(stack: Stack, console: Console, expected: int) -> RunObserver:
    observer = RunObserver(DEMO_STRATEGY)
    nc = await stack.connection.connect(follow=True)
    await observer.start(nc)
    try:
        with console.status("starting the four services…"):
            await stack.start_services()
        columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[day]}"),
                   TextColumn("equity {task.fields[equity]}"), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("replay", total=expected, day="", equity="")

            def show(seen: RunObserver) -> None:
                latest = seen.snapshots[-1]
                progress.update(task, completed=len(seen.snapshots), day=iso_date(latest["ts_event"]),
                                equity=f"{latest['equity']:,.0f}")

            await follow(stack, observer, lambda seen: len({s["ts_event"] for s in seen.snapshots}) >= expected,
                         show)
    finally:
        await observer.stop()
        await nc.close()
    return observer
