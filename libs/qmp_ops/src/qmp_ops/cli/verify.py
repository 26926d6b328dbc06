"""`qmp verify <strategy> [--test NAME]`: prove a strategy and the system are safe to deploy.

Exit code 0 when every test passed, 1 when one failed, 3 when one could not be carried out; the report
(Markdown, JSON, PNG) goes to `reports/verify-<strategy>-<time>/` and the result to
`.qmp/verify/<strategy>/latest.json`, which `qmp_lab.verify.gate.check_deployable` reads. Verifying a
strategy id that a running stack hosts and seeing it fail halts it, locks it and raises an alert.
"""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qmp_ops.cli.research import RAY_ADDRESS_HELP, WORKERS_HELP, research_workers

console = Console()
HOME = Path(".qmp")
TEST_NAMES = "walk_forward, fat_tail, black_swan, slippage, numba"




def register(app: typer.Typer) -> None:
    """Add `qmp verify` and `qmp sweep` to the qmp command."""
    app.command(name="verify")(verify)
    app.command(name="sweep")(sweep)


def sweep(
    strategy: Annotated[str, typer.Argument(help="package.module:Class")],
    grid: Annotated[Path, typer.Option(help="a TOML file: each setting a list of values to try")],
    config: Annotated[str, typer.Option(help="the strategy's base config as a JSON object")] = "",
    start: Annotated[str, typer.Option(help="history start (bundled S&P 500 data)")] = "",
    end: Annotated[str, typer.Option(help="history end")] = "",
    reports: Annotated[Path, typer.Option(help="where the CSV of every set goes")] = Path("reports"),
    workers: Annotated[int | None, typer.Option(min=1, envvar="QMP_RESEARCH_WORKERS", help=WORKERS_HELP)] = None,
    ray_address: Annotated[str, typer.Option(help=RAY_ADDRESS_HELP)] = "",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Backtest a strategy over every parameter set of a grid (its own config first): annual return and
    volatility, Sharpe and maximum drawdown per set, best first; each set a piece run in this process or on Ray,
    with the same numbers either way."""
    import csv
    import dataclasses
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qmp_core.datasets import load_sp500_prices
    from qmp_core.strategy import StrategyLoadError
    from qmp_lab.parallel import TaskFailed
    from qmp_lab.sweep import read_grid
    from qmp_lab.sweep import sweep as run_sweep
    from qmp_lab.verify.core import StrategyTarget, VerificationError, jsonable

    try:
        values = read_grid(grid)
        target = StrategyTarget(strategy, json.loads(config) if config else None)
        target.build()
    except (ValueError, StrategyLoadError, VerificationError) as error:
        raise typer.BadParameter(str(error)) from None
    prices = load_sp500_prices(start or None, end or None)
    spread = research_workers(workers, ray_address, target.pythonpath)
    columns = (TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("sets"), TimeElapsedColumn())
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("sweep", total=None)
        try:
            rows = run_sweep(target, values, prices, spread,
                             lambda done, total: progress.update(task, completed=done, total=total))
        except (TaskFailed, VerificationError) as error:
            console.print(f"[red]qmp sweep:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(1) from None
    seconds = time.perf_counter() - started
    ranked = sorted(rows, key=lambda r: -r.sharpe if r.sharpe == r.sharpe else float("inf"))
    reports.mkdir(parents=True, exist_ok=True)
    out = reports / f"sweep-{target.key}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.csv"
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["config", "annual_return", "annual_volatility", "sharpe", "max_drawdown"])
        for row in rows:
            writer.writerow([json.dumps(row.config), row.annual_return, row.annual_volatility, row.sharpe,
                             row.max_drawdown])
    if as_json:
        print(json.dumps(jsonable({"strategy": strategy, "sets": len(rows), "seconds": seconds, "csv": str(out),
                                   "workers": spread.describe(), "rows": [dataclasses.asdict(r) for r in rows]})))
        return
    table = Table(title=f"qmp sweep {target.label}: {len(rows)} sets in {seconds:.1f} s on {spread.describe()}")
    for column in ("config", "annual return", "volatility", "Sharpe", "max drawdown"):
        table.add_column(column)
    for row in ranked:
        table.add_row(escape(json.dumps(row.config)), f"{row.annual_return:.2%}", f"{row.annual_volatility:.2%}",
                      f"{row.sharpe:.2f}", f"{row.max_drawdown:.2%}")
    console.print(table)
    console.print(f"every set: {out}")


def verify(
    strategy: Annotated[str, typer.Argument(help="package.module:Class, or a strategy id the running stack hosts")],
    test: Annotated[list[str] | None, typer.Option("--test", help=f"run only these (repeatable): {TEST_NAMES}")] = None,
    config: Annotated[str, typer.Option(help="strategy config as a JSON object")] = "",
    strategy_id: Annotated[str, typer.Option("--id", help="the id it is deployed under (for the deploy gate)")] = "",
    reports: Annotated[Path, typer.Option(help="where the report goes")] = Path("reports"),
    start: Annotated[str, typer.Option(help="history start for walk_forward and fat_tail")] = "",
    end: Annotated[str, typer.Option(help="history end for walk_forward and fat_tail")] = "",
    grid: Annotated[str, typer.Option(help="walk_forward: configurations tried, JSON setting → list")] = "",
    trials: Annotated[int, typer.Option(help="walk_forward: configurations tried in research (DSR), if more")] = 0,
    vol_target: Annotated[float, typer.Option(help="black_swan: stated annual volatility target")] = 0.10,
    monte_carlo: Annotated[int, typer.Option(help="black_swan: also replay this many simulated crises")] = 0,
    episodes: Annotated[str, typer.Option(help="black_swan: comma-separated episodes (default all)")] = "",
    quick: Annotated[bool, typer.Option("--quick", help="short histories and samples (smoke run)")] = False,
    workers: Annotated[int | None, typer.Option(min=1, envvar="QMP_RESEARCH_WORKERS", help=WORKERS_HELP)] = None,
    ray_address: Annotated[str, typer.Option(help=RAY_ADDRESS_HELP)] = "",
    halt: Annotated[bool, typer.Option(help="halt a running strategy id whose verification fails")] = True,
    alert_command: Annotated[str, typer.Option(envvar="QMP_ALERT_COMMAND", help="run on failure, JSON on stdin")] = "",
    alert_webhook: Annotated[str, typer.Option(envvar="QMP_ALERT_WEBHOOK", help="POST the alert here")] = "",
) -> None:
    """Run the verification suite on a strategy; exit non-zero unless every test passed."""
    from qmp_core.strategy import StrategyLoadError
    from qmp_lab.verify.core import StrategyTarget, VerificationError
    from qmp_lab.verify.runner import halting_failures, resolve_tests, run_verification
    from qmp_ops.emergency import alert_failed_verification, emergency_halt, resolve_running_strategy
    from qmp_ops.replay import stack_replay
    from qmp_ops.runtime.supervisor import Connection, StackUnavailable

    try:
        tests = resolve_tests(test)
        parsed_config = json.loads(config) if config else None
        options = {"vol_target": vol_target, "monte_carlo": monte_carlo, "trials": trials}
        if grid:
            options["grid"] = json.loads(grid)
        if episodes:
            options["episodes"] = [e.strip() for e in episodes.split(",") if e.strip()]
        options |= {k: v for k, v in (("start", start), ("end", end)) if v}
    except (ValueError, json.JSONDecodeError) as error:
        raise typer.BadParameter(str(error)) from error
    connection = None
    running = ":" not in strategy
    try:
        if running:
            connection = Connection.read(HOME / "connection.json")
            target = resolve_running_strategy(strategy, connection)
            if parsed_config is not None:
                target = StrategyTarget(target.path, parsed_config, target.strategy_id, target.pythonpath)
        else:
            target = StrategyTarget(strategy, parsed_config, strategy_id=strategy_id)
        if target.pythonpath:
            sys.path[:0] = [p for p in target.pythonpath.split(":") if p and p not in sys.path]
        target.build()
    except (FileNotFoundError, StackUnavailable, VerificationError, StrategyLoadError) as error:
        console.print(f"[red]cannot verify {strategy}[/]: {error}")
        raise typer.Exit(2) from None

    console.print(f"verifying [bold]{target.path}[/]" + (f" (id {target.strategy_id})" if target.strategy_id else "")
                  + f": {', '.join(tests)}")

    def show(result) -> None:
        colour = {"pass": "green", "fail": "red", "error": "yellow", "skipped": "dim"}[result.status]
        console.print(f"[{colour}]{result.status.upper():7}[/] {result.name} ({result.seconds:.1f} s): "
                      f"{escape(result.summary)}")
        for check in result.checks:
            mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "·"}[check.passed]
            console.print(f"   {mark} {escape(check.name)}: {escape(check.detail)}", highlight=False)

    spread = research_workers(workers, ray_address, target.pythonpath)
    console.print(f"independent pieces (folds, configurations) run in {spread.describe()}")
    run = run_verification(target, tests, reports=reports, home=HOME, options=options, quick=quick,
                           log=lambda message: console.print(f"[dim]{escape(message)}[/]", highlight=False),
                           on_result=show, stack_replay=stack_replay, workers=spread)
    table = Table(title=f"qmp verify {target.label}")
    for column in ("test", "status", "seconds"):
        table.add_column(column)
    for result in run.results:
        table.add_row(result.name, result.status, f"{result.seconds:.1f}")
    console.print(table)
    console.print(f"report: {run.report}  (JSON: {run.report.with_suffix('.json')})")
    console.print(f"deploy gate record: {run.record}")
    failed = ", ".join(r.name for r in run.results if r.status in ("fail", "error"))
    if run.exit_code != 0 and running and halt and halting_failures(run.results):
        outcome = emergency_halt(target.strategy_id, f"verification failed: {failed}", HOME, connection,
                                 report=str(run.report), alert_command=alert_command, alert_webhook=alert_webhook)
        console.print(f"[red]emergency protocol[/]: halt {outcome['halt']}, lock {outcome['lock']}, "
                      f"alert {outcome['alert']}")
    elif run.exit_code != 0:  # nothing runs under an import path: no halt, no lock, but the alert goes out
        sent = alert_failed_verification(target.strategy_id or target.path, f"verification failed: {failed}",
                                         str(run.report), alert_command, alert_webhook)
        if sent:
            console.print(f"[red]alert[/]: {escape('; '.join(sent))}")
    raise typer.Exit(run.exit_code)
