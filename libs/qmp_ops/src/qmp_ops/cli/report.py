"""The demo's summary and report: Markdown, JSON and a PNG chart of equity, drawdown and VaR."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qmp_lab.verify.core import max_drawdown
from qmp_lab.verify.report import pyplot
from qmp_ops.replay import RunObserver


@dataclass(frozen=True)
class Summary:
    strategy: str
    start: str
    end: str
    days: int
    initial_equity: float
    final_equity: float
    total_return: float
    max_drawdown: float
    benchmark_max_drawdown: float
    last_var_99: float | None
    last_es_99: float | None
    orders_accepted: int
    orders_denied: int
    fills: int
    mean_slippage_bps: float
    breaker_events: int

    def rows(self) -> list[tuple[str, str]]:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2%}"

        return [
            ("period", f"{self.start} → {self.end} ({self.days} trading days)"),
            ("equity", f"{self.initial_equity:,.0f} → {self.final_equity:,.0f} ({self.total_return:+.2%})"),
            ("max drawdown", f"{pct(self.max_drawdown)} (S&P 500 index: {pct(self.benchmark_max_drawdown)})"),
            ("last VaR 99% / ES 99% (1 day, historical)", f"{pct(self.last_var_99)} / {pct(self.last_es_99)}"),
            ("orders accepted / denied", f"{self.orders_accepted} / {self.orders_denied}"),
            ("fills (mean slippage)", f"{self.fills} ({self.mean_slippage_bps:.2f} bps)"),
            ("breaker events", str(self.breaker_events)),
        ]


def equity_frame(observer: RunObserver, since: pd.Timestamp | None = None) -> pd.DataFrame:
    """Return equity, VaR and ES per snapshot time, from `since` on (warm-up left out)."""
    frame = pd.DataFrame(
        {
            "ts": pd.to_datetime([s["ts_event"] for s in observer.snapshots], unit="ns"),
            "equity": [s["equity"] for s in observer.snapshots],
            "var_99": [s["var"].get("historical_99", np.nan) for s in observer.snapshots],
            "es_99": [s["es"].get("historical_99", np.nan) for s in observer.snapshots],
        }
    )
    frame = frame.drop_duplicates("ts").set_index("ts").sort_index()
    return frame if since is None else frame[frame.index >= since]


def summarize(observer: RunObserver, benchmark: pd.Series) -> Summary:
    frame = equity_frame(observer, since=benchmark.index[0])
    if frame.empty:
        raise RuntimeError("the run published no risk snapshots: nothing to summarize")
    last = frame.iloc[-1]
    since = frame.index[0].value
    decisions = [accepted for ts, accepted in observer.decisions if ts >= since]
    slippage = [bps for ts, bps in observer.fill_records if ts >= since]
    breakers = [event for event in observer.breaker_events if event["ts_event"] >= since]
    return Summary(
        strategy=observer.strategy,
        start=str(frame.index[0].date()),
        end=str(frame.index[-1].date()),
        days=len(frame),
        initial_equity=float(frame["equity"].iloc[0]),
        final_equity=float(last["equity"]),
        total_return=float(last["equity"] / frame["equity"].iloc[0] - 1.0),
        max_drawdown=max_drawdown(frame["equity"]),
        benchmark_max_drawdown=max_drawdown(benchmark),
        last_var_99=None if np.isnan(last["var_99"]) else float(last["var_99"]),
        last_es_99=None if np.isnan(last["es_99"]) else float(last["es_99"]),
        orders_accepted=sum(decisions),
        orders_denied=len(decisions) - sum(decisions),
        fills=len(slippage),
        mean_slippage_bps=float(np.mean(slippage)) if slippage else 0.0,
        breaker_events=len(breakers),
    )


def plot_run(path: Path, frame: pd.DataFrame, title: str, label: str, benchmark: pd.Series | None = None,
             breaker_events: list[dict[str, Any]] | None = None) -> None:
    """Chart a run's equity, drawdown and VaR / ES 99% per snapshot (`equity_frame`) into `path`, beside a
    benchmark's when given (rebased to the run's first equity), with a line at each breaker event."""
    plt = pyplot()
    figure, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    axes[0].plot(frame.index, frame["equity"], label=label)
    axes[1].fill_between(frame.index, -(1 - frame["equity"] / frame["equity"].cummax()), color="tab:red",
                         alpha=0.5, label="strategy")
    if benchmark is not None:
        bench = benchmark.reindex(frame.index, method="ffill")
        bench = bench / bench.iloc[0] * frame["equity"].iloc[0]
        axes[0].plot(bench.index, bench.values, label="S&P 500 index, buy and hold", alpha=0.7)
        axes[1].plot(bench.index, -(1 - bench / bench.cummax()), color="tab:gray", label="index")
        axes[0].legend()
        axes[1].legend()
    axes[0].set_ylabel("equity")
    axes[1].set_ylabel("drawdown")
    axes[2].plot(frame.index, frame["var_99"], label="VaR 99% (historical, 1 day)")
    axes[2].plot(frame.index, frame["es_99"], label="ES 99%")
    for event in breaker_events or []:
        axes[2].axvline(pd.to_datetime(event["ts_event"], unit="ns"), color="tab:red", alpha=0.3)
    axes[2].set_ylabel("fraction of equity")
    axes[2].legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(folder: Path, observer: RunObserver, summary: Summary, benchmark: pd.Series) -> Path:
    """Write report.md, summary.json and report.png into folder; return the Markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_run(folder / "report.png", equity_frame(observer, since=benchmark.index[0]),
             f"QMP demo: {summary.start} → {summary.end}", f"{summary.strategy} (QMP)", benchmark,
             observer.breaker_events)
    (folder / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
    lines = [f"# QMP demo report: {summary.strategy}", "", "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary.rows()]
    lines += ["", "![equity, drawdown and VaR](report.png)", "", "## Breaker events", ""]
    lines += [_breaker_line(event) for event in observer.breaker_events] or ["none"]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _breaker_line(event: dict[str, Any]) -> str:
    when = pd.to_datetime(event["ts_event"], unit="ns").date()
    return (f"- {when} {event.get('event')} `{event['breaker']}`: value {event['value']:.4f} vs threshold "
            f"{event['threshold']:.4f} → {event['action']}")
