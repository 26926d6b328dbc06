"""`qmp portfolio optimise | apply`: budgets across strategies from their recorded returns, sent as allocations.

    qmp portfolio optimise --strategies a,b,c [--min-weight 0.05] [--max-weight 0.6] [--since 2024-01-01]
    qmp portfolio apply reports/portfolio-<time>.json --method es_risk_parity --confirm
"""

import asyncio
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qmp_ops.runtime.supervisor import Connection, StackUnavailable

console = Console()
app = typer.Typer(help="Budgets across strategies: `qmp portfolio optimise`, `qmp portfolio apply`.",
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
    record = {"strategies": names, "days": len(returns), "first_day": str(returns.index[0].date()),
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
