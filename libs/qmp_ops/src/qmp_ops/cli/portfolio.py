"""`qmp portfolio optimise | apply`: budgets across strategies from their recorded returns, sent as allocations.

    qmp portfolio optimise --strategies a,b,c [--min-weight 0.05] [--max-weight 0.6] [--since 2024-01-01]
    qmp portfolio test reports/portfolio-<time>.json [--scenarios 100] [--workers N]
    qmp portfolio apply reports/portfolio-<time>.json --method es_risk_parity --confirm
"""

import asyncio
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qmp_ops.cli.research import RAY_ADDRESS_HELP, WORKERS_HELP, research_workers
from qmp_ops.runtime.supervisor import Connection, StackUnavailable

console = Console()
app = typer.Typer(help="Budgets across strategies: `qmp portfolio optimise`, `test`, `apply`.",
                  no_args_is_help=True)


@app.command()
def optimise(
    strategies: Annotated[str, typer.Option(help="the strategies, comma-separated (two or more)")],
    min_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="each strategy's least budget")] = 0.0,
    max_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="each strategy's largest budget")] = 1.0,
    max_turnover: Annotated[float | None, typer.Option(min=0.0, help="mean_cvar: the most the budgets may move "
                                                                     "from the allocations in force")] = None,
    since: Annotated[str | None, typer.Option(help="returns from this day on (UTC)")] = None,
    reports: Annotated[Path, typer.Option(help="where the proposals go (JSON)")] = Path("reports"),
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Propose each strategy's budget from its recorded daily returns by four methods (risk parity on Expected
    Shortfall, hierarchical risk parity, least ES, equal weight: skfolio's), each with the portfolio's ES 99%
    and every strategy's share of it; written to reports/portfolio-<time>.json for `qmp portfolio apply`."""
    from qmp_lab.portfolio import PortfolioError, propose
    from qmp_ops.budgets import daily_returns

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    start = datetime.fromisoformat(since).replace(tzinfo=UTC) if since else None
    try:
        connection = Connection.read()
        returns = asyncio.run(daily_returns(connection.database_url, names, start))
        previous = None
        if max_turnover is not None:
            from qmp_ops.cli.control import gather_status

            status = asyncio.run(gather_status(connection))
            previous = {s: float(status["strategies"].get(s, {}).get("allocation", 1.0)) for s in names}
        proposals = propose(returns, min_weight=min_weight, max_weight=max_weight, previous=previous,
                            max_turnover=max_turnover)
    except (PortfolioError, StackUnavailable, OSError) as error:
        console.print(f"[red]qmp portfolio optimise:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    reports.mkdir(parents=True, exist_ok=True)
    out = reports / f"portfolio-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    record = {"strategies": names, "since": since, "days": len(returns), "first_day": str(returns.index[0].date()),
              "last_day": str(returns.index[-1].date()), "min_weight": min_weight, "max_weight": max_weight,
              "proposals": [asdict(p) for p in proposals]}
    out.write_text(json.dumps(record, indent=2) + "\n")
    if as_json:
        print(json.dumps(record | {"file": str(out)}))
        return
    table = Table(title=f"budgets from {len(returns)} days of returns ({record['first_day']} → {record['last_day']})")
    table.add_column("strategy")
    for p in proposals:
        table.add_column(p.method)
    for name in names:
        table.add_row(escape(name), *(f"{p.weights[name]:.1%} (ES {p.es_contributions[name]:.2%})" for p in proposals))
    table.add_row("portfolio ES 99%", *(f"{p.es:.2%}" for p in proposals))
    console.print(table)
    console.print(f"proposals: {out}  (apply one: qmp portfolio apply {out} --method <method> --confirm)")


@app.command()
def test(
    proposals: Annotated[Path, typer.Argument(help="a file `qmp portfolio optimise` wrote")],
    scenarios: Annotated[int, typer.Option(min=5, help="bootstrapped and stressed one-year scenarios")] = 100,
    seed: Annotated[int, typer.Option(help="the scenarios' seed: the same seed, the same scenarios")] = 7,
    reports: Annotated[Path, typer.Option(help="where the report goes")] = Path("reports"),
    workers: Annotated[int | None, typer.Option(min=1, envvar="QMP_RESEARCH_WORKERS", help=WORKERS_HELP)] = None,
    ray_address: Annotated[str, typer.Option(help=RAY_ADDRESS_HELP)] = "",
) -> None:
    """Every proposal of the file out of sample over one-year scenarios made from the same recorded returns
    (bootstrapped; volatility x3; correlations 0.9; the 2008 and 2020 crises): its ES 99%, maximum drawdown
    and the breakers it would trip, per method and per kind of scenario; report.md, outcomes.json and a chart."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qmp_lab.parallel import TaskFailed
    from qmp_lab.portfolio import PortfolioError, Proposal, out_of_sample
    from qmp_ops.budgets import daily_returns, write_test_report

    try:
        record = json.loads(proposals.read_text())
        chosen = [Proposal(**p) for p in record["proposals"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise typer.BadParameter(f"{proposals}: not a file of proposals ({error})") from None
    spread = research_workers(workers, ray_address)
    columns = (TextColumn("[bold]scenarios"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        connection = Connection.read()
        since = datetime.fromisoformat(record["since"]).replace(tzinfo=UTC) if record.get("since") else None
        returns = asyncio.run(daily_returns(connection.database_url, record["strategies"], since))
        returns = returns[returns.index <= pd.Timestamp(record["last_day"])]
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("scenarios", total=scenarios)
            outcomes = out_of_sample(returns, chosen, scenarios, seed, spread,
                                     lambda done, total: progress.update(task, completed=done))
    except (PortfolioError, StackUnavailable, OSError, TaskFailed) as error:
        console.print(f"[red]qmp portfolio test:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    folder = reports / f"portfolio-test-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    path, summary = write_test_report(folder, record, outcomes)
    table = Table(title=f"{len(chosen)} proposals over {scenarios} scenarios (seed {seed}, {spread.describe()})")
    for column in ("method", "ES 99% median / p95", "max drawdown median / p95", "drawdown halts",
                   "volatility cuts"):
        table.add_column(column)
    for method, row in summary.items():
        table.add_row(method, f"{row['es_median']:.2%} / {row['es_p95']:.2%}",
                      f"{row['drawdown_median']:.2%} / {row['drawdown_p95']:.2%}",
                      f"{row['drawdown_halt_share']:.0%}", f"{row['volatility_share']:.0%}")
    console.print(table)
    console.print(f"report: {path}")


@app.command()
def apply(
    proposals: Annotated[Path, typer.Argument(help="a file `qmp portfolio optimise` wrote")],
    method: Annotated[str, typer.Option(help="which proposal: es_risk_parity, hrp, mean_cvar or equal")],
    confirm: Annotated[bool, typer.Option("--confirm", help="send them (without it: show what would be sent)")]
    = False,
) -> None:
    """Send one proposal's budgets as `set_allocation` control commands, one per strategy, under your
    credentials; each reply is shown and each command is in the audit trail. Exit 1 if one was refused."""
    from qmp_ops.budgets import apply_budgets

    try:
        record = json.loads(proposals.read_text())
        chosen = next(p for p in record["proposals"] if p["method"] == method)
    except (OSError, ValueError, KeyError) as error:
        raise typer.BadParameter(f"{proposals}: not a file of proposals ({error})") from None
    except StopIteration:
        methods = ", ".join(p["method"] for p in record["proposals"])
        raise typer.BadParameter(f"{proposals} has no {method!r} proposal: {methods}") from None
    weights: dict[str, float] = chosen["weights"]
    for strategy, weight in weights.items():
        console.print(f"{escape(strategy)}: allocation {weight:.4f}")
    if not confirm:
        console.print("nothing sent: add --confirm to send these allocations")
        raise typer.Exit(1)
    replies = asyncio.run(apply_budgets(Connection.read(), weights))
    refused = {s: r for s, r in replies.items() if not r.get("accepted")}
    for strategy, reply in replies.items():
        verdict = ("[green]accepted[/]" if reply.get("accepted")
                   else f"[red]refused[/]: {escape(str(reply.get('reason')))}")
        console.print(f"{escape(strategy)}: {verdict}")
    if refused:
        raise typer.Exit(1)
