"""Strategies' budgets on a running stack: their recorded daily returns in, allocation commands out.

`daily_returns` reads each strategy's equity curve (execution's `equity_curve` rows: paper and live books
alike), keeps the last equity of each UTC day and turns it into simple daily returns, one column a strategy
on the days they all have. `apply_budgets` sends each strategy's budget as a `set_allocation` control command
under the operator's credentials, through the same contract as `qmp` and the dashboard (each one is in the
audit trail with its sender), and returns the deployer's replies.
"""

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pandas as pd

from qmp_lab.portfolio import Outcome
from qmp_ops.cli.control import send_control
from qmp_ops.runtime.supervisor import Connection

DAILY_EQUITY = """
SELECT strategy, date_trunc('day', ts AT TIME ZONE 'UTC') AS day, (array_agg(equity ORDER BY ts DESC))[1] AS equity
FROM equity_curve
WHERE strategy = ANY($1::text[]) AND ($2::timestamptz IS NULL OR ts >= $2)
GROUP BY strategy, day ORDER BY day
"""


async def daily_returns(database_url: str, strategies: list[str], since: datetime | None = None) -> pd.DataFrame:
    """Days × strategies of simple returns from each day's last equity; only days every strategy has."""
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await connection.fetch(DAILY_EQUITY, strategies, since)
    finally:
        await connection.close()
    if not rows:
        return pd.DataFrame(columns=strategies, dtype=float)
    equity = pd.DataFrame([dict(r) for r in rows]).pivot(index="day", columns="strategy", values="equity")
    missing = [s for s in strategies if s not in equity.columns]
    for name in missing:
        equity[name] = float("nan")
    return equity[strategies].pct_change(fill_method=None).iloc[1:].dropna()


async def apply_budgets(connection: Connection, weights: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Send each strategy's budget as its allocation; return strategy → the deployer's reply."""
    replies = {}
    for strategy, weight in weights.items():
        allocation = min(1.0, max(0.0, round(weight, 6)))
        replies[strategy] = await send_control(connection, strategy, {"command": "set_allocation",
                                                                      "allocation": allocation})
    return replies


def write_test_report(folder: Path, record: dict[str, Any], outcomes: list[Outcome]) -> tuple[Path, dict[str, Any]]:
    """Write report.md, outcomes.json and drawdowns.png of `qmp portfolio test`; return the report's path and the
    summary per method (ES and drawdown median / p95, the share of scenarios tripping each breaker)."""
    from qmp_lab.verify.report import pyplot

    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{"method": o.method, "kind": o.scenario.kind, "scenario": o.scenario.index, "es": o.es,
                           "max_drawdown": o.max_drawdown, "drawdown_halt": o.drawdown_halt,
                           "volatility": o.volatility} for o in outcomes])
    summary: dict[str, Any] = {}
    for method, rows in frame.groupby("method", sort=False):
        summary[str(method)] = {
            "es_median": float(rows["es"].median()), "es_p95": float(rows["es"].quantile(0.95)),
            "drawdown_median": float(rows["max_drawdown"].median()),
            "drawdown_p95": float(rows["max_drawdown"].quantile(0.95)),
            "drawdown_halt_share": float(rows["drawdown_halt"].mean()),
            "volatility_share": float(rows["volatility"].mean())}
    by_kind = frame.groupby(["method", "kind"])[["es", "max_drawdown", "drawdown_halt"]].mean()
    (folder / "outcomes.json").write_text(json.dumps({"proposals": record["proposals"], "summary": summary,
                                                      "outcomes": frame.to_dict(orient="records")}, indent=1))
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 5))
    methods = list(summary)
    axis.boxplot([frame[frame["method"] == m]["max_drawdown"] for m in methods], tick_labels=methods)
    axis.set_ylabel("maximum drawdown over a year")
    axis.set_title(f"{len(frame) // max(1, len(methods))} scenarios per proposal")
    figure.tight_layout()
    figure.savefig(folder / "drawdowns.png", dpi=100)
    plt.close(figure)
    lines = [f"# Budgets out of sample: {', '.join(record['strategies'])}", "",
             f"Proposals from {record['days']} days ({record['first_day']} → {record['last_day']}), each over "
             f"{len(frame) // max(1, len(methods))} one-year scenarios made from the same returns: bootstrapped, "
             "volatility x3, correlations 0.9, and the 2008 and 2020 crises (the market's moves at each "
             "strategy's volatility).", "",
             "| method | ES 99% median | ES 99% p95 | max drawdown median | max drawdown p95 | drawdown halts | "
             "volatility cuts |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {r['es_median']:.2%} | {r['es_p95']:.2%} | {r['drawdown_median']:.2%} | "
              f"{r['drawdown_p95']:.2%} | {r['drawdown_halt_share']:.0%} | {r['volatility_share']:.0%} |"
              for m, r in summary.items()]
    lines += ["", "![maximum drawdown per proposal](drawdowns.png)", "", "## By kind of scenario (means)", "",
              "| method | scenario | ES 99% | max drawdown | drawdown halts |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {k} | {row['es']:.2%} | {row['max_drawdown']:.2%} | {row['drawdown_halt']:.0%} |"
              for (m, k), row in by_kind.iterrows()]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path, summary
