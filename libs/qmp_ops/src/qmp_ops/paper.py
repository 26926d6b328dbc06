"""`qmp paper`: a strategy in paper for a set time on live-like data, then its session report.

A fresh embedded stack hosts the strategy in execution with the paper broker (fills against bars with the
slippage model, volume limits and fees), on one of these feeds:
- `synthetic`: the synthetic market as a live feed on the wall clock, a bar every `bar_seconds`;
- `history`: the bundled S&P 500 history from `start`, paced at `rate` days a second (the stack's replay clock:
  event time is the history's);
- `exchange` (a ccxt exchange) or `alpaca`: the venue's own bars of `venue_symbols`, live, from `backfill_bars`
  closed bars back (the collector's venue feed); the orders are still filled on paper.
The session watches what the stack publishes for the strategy (`replay.RunObserver`: risk snapshots, order
decisions, fills, breaker events) for `duration_s`. It ends with a halt, which measures control on the way
out: the deployer's reply, and the first order execution denies under it (when the strategy tries one within
a few bars). The report: orders accepted and denied by reason, fills with the slippage realized against
arrival and the model's prediction for each, equity, PnL, drawdown, VaR / ES 99%, breaker events and the
control latencies, as report.md, session.json and report.png.
"""

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from qmp_core import subjects
from qmp_lab.verify.core import max_drawdown
from qmp_ops.cli.control import send_control
from qmp_ops.cli.report import equity_frame, plot_run
from qmp_ops.replay import RunObserver, follow
from qmp_ops.runtime.supervisor import Stack, StackOptions

DENIAL_WAIT_BARS = 5  # after the closing halt, how many bar intervals to wait for the first denied order,
DENIAL_WAIT_MAX_S = 10.0  # ... and at most this long (a feed of one-minute bars is not waited on for minutes)


@dataclass(frozen=True)
class PaperOptions:
    strategy_path: str  # package.module:Class
    strategy_id: str = "paper"
    duration_s: float = 3600.0
    source: Literal["synthetic", "history", "exchange", "alpaca"] = "synthetic"
    symbols: int = 20  # synthetic universe
    bar_seconds: float = 1.0  # synthetic: a bar every this many seconds
    start: str = "2018-01-01"  # history: the first day
    rate: float = 5.0  # history: days a second
    pythonpath: str = ""  # where execution finds a strategy outside the installed packages
    capital: float = 1_000_000.0  # the strategy's starting capital
    # A venue's live bars (source exchange or alpaca): its symbols, the exchange (a ccxt id) and its bar length,
    # another base URL (a proxy, a fake venue), its live API rather than its testnet, closed bars to start back.
    venue_symbols: tuple[str, ...] = ()
    exchange_id: str = "binance"
    timeframe: str = "1m"
    venue_url: str = ""
    live: bool = False
    backfill_bars: int = 100

    @property
    def bar_interval_s(self) -> float:
        if self.source in ("exchange", "alpaca"):
            return 60.0 if self.source == "alpaca" else _timeframe_s(self.timeframe)
        return self.bar_seconds if self.source == "synthetic" else 1.0 / self.rate


def _timeframe_s(timeframe: str) -> float:
    """A ccxt timeframe's length in seconds, by ccxt's own reading of it (60 s for one it cannot read)."""
    from ccxt import Exchange

    try:
        return float(Exchange.parse_timeframe(timeframe))
    except (KeyError, ValueError, TypeError, IndexError):
        return 60.0


def stack_options(options: PaperOptions, home: Path) -> StackOptions:
    if options.source == "synthetic":
        collector = {"QMP_SOURCE": "synthetic", "QMP_SYMBOLS": str(options.symbols),
                     "QMP_BAR_SECONDS": str(options.bar_seconds), "QMP_VENUE": "paper"}
        clock = "live"
    elif options.source == "history":
        collector = {"QMP_SOURCE": "history", "QMP_VENUE": "sp500", "QMP_START": options.start,
                     "QMP_END": "2022-12-31", "QMP_REPLAY_RATE": str(options.rate)}
        clock = "replay"
    else:  # a venue's own bars, live; its credentials (Alpaca's) come from QMP_ALPACA_* in the environment
        collector = {"QMP_SOURCE": options.source, "QMP_VENUE_SYMBOLS": ",".join(options.venue_symbols),
                     "QMP_VENUE_BACKFILL_BARS": str(options.backfill_bars),
                     "QMP_VENUE_POLL_S": str(min(10.0, options.bar_interval_s / 2))}
        if options.source == "exchange":
            collector |= {"QMP_EXCHANGE_ID": options.exchange_id, "QMP_EXCHANGE_TIMEFRAME": options.timeframe,
                          "QMP_EXCHANGE_URL": options.venue_url, "QMP_EXCHANGE_SANDBOX": str(not options.live).lower()}
        else:
            collector["QMP_ALPACA_DATA_URL"] = options.venue_url
        clock = "live"
    execution = {"QMP_STRATEGIES": f"{options.strategy_id}={options.strategy_path}",
                 "QMP_INITIAL_CAPITAL": repr(options.capital)}
    if options.pythonpath:
        execution["PYTHONPATH"] = options.pythonpath
    # A venue's feed reads its credentials from the operator's environment, as `qmp up` does.
    return StackOptions(home=home, clock=clock, fresh=True, share_connection=False,
                        pass_environment=options.source == "alpaca",
                        service_env={"collector": collector, "execution": execution})


@dataclass
class ControlProbe:
    """The closing halt: how long the deployer took to answer, and execution to deny the next order."""

    accepted: bool = False
    reply_ms: float | None = None
    first_denial_ms: float | None = None
    detail: str = ""


@dataclass
class SessionSummary:
    strategy_id: str
    strategy_path: str
    source: str
    duration_s: float
    snapshots: int
    first_event: str
    last_event: str
    initial_equity: float | None
    final_equity: float | None
    pnl: float | None
    max_drawdown: float | None
    last_var_99: float | None
    last_es_99: float | None
    max_var_99: float | None
    orders_accepted: int
    orders_denied: int
    denial_reasons: dict[str, int]
    fills: int
    slippage_bps: dict[str, float | None]  # realized against arrival: mean, p95
    model_slippage_bps: dict[str, float | None]  # the model's prediction: mean, p95
    model_miss_bps: dict[str, float | None]  # realized - model: mean, p95 of |miss|
    breaker_events: list[dict[str, Any]]
    control: ControlProbe = field(default_factory=ControlProbe)
    run_dir: str = ""  # the stack's logs and traces


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p95": None}
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "p95": float(np.percentile(array, 95))}


def summarize(observer: RunObserver, options: PaperOptions, seconds: float, control: ControlProbe) -> SessionSummary:
    frame = equity_frame(observer)
    realized = [bps for _, bps in observer.fill_records]
    pairs = [(bps, model) for bps, model in zip(realized, observer.model_slippage_bps, strict=True)
             if model is not None]
    first = float(frame["equity"].iloc[0]) if len(frame) else None
    last = float(frame["equity"].iloc[-1]) if len(frame) else None

    def finite(value: Any) -> float | None:
        return float(value) if value is not None and math.isfinite(value) else None

    return SessionSummary(
        strategy_id=options.strategy_id, strategy_path=options.strategy_path, source=options.source,
        duration_s=round(seconds, 1), snapshots=len(frame),
        first_event=str(frame.index[0]) if len(frame) else "", last_event=str(frame.index[-1]) if len(frame) else "",
        initial_equity=first, final_equity=last, pnl=None if first is None or last is None else last - first,
        max_drawdown=max_drawdown(frame["equity"]) if len(frame) else None,
        last_var_99=finite(frame["var_99"].iloc[-1]) if len(frame) else None,
        last_es_99=finite(frame["es_99"].iloc[-1]) if len(frame) else None,
        max_var_99=finite(frame["var_99"].max()) if len(frame) else None,
        orders_accepted=observer.accepted, orders_denied=observer.denied,
        denial_reasons=dict(observer.denial_reasons), fills=observer.fills,
        slippage_bps=_stats(realized), model_slippage_bps=_stats([m for _, m in pairs]),
        model_miss_bps={"mean": _stats([r - m for r, m in pairs])["mean"],
                        "p95": _stats([abs(r - m) for r, m in pairs])["p95"]},
        breaker_events=list(observer.breaker_events), control=control,
    )


async def close_with_halt(stack: Stack, nc: Any, options: PaperOptions) -> ControlProbe:
    """Halt the strategy; time the reply and the first order execution denies under the halt."""
    denied = asyncio.Event()

    async def on_decision(msg: Any) -> None:
        body = json.loads(msg.data)
        decisions = body.get("decisions", [body])
        if any(d.get("event") == "OrderDenied" and d.get("reason_code") == "HALTED" for d in decisions):
            denied.set()

    watching = [await nc.subscribe(subject, cb=on_decision) for subject in
                (subjects.orders(options.strategy_id), subjects.batch_events(options.strategy_id))]
    await nc.flush()
    sent = time.perf_counter()
    reply = await send_control(stack.connection, options.strategy_id,
                               {"command": "halt", "reason": "paper session ended"})
    probe = ControlProbe(accepted=bool(reply.get("accepted")), reply_ms=(time.perf_counter() - sent) * 1000,
                         detail=str(reply.get("reason", "")))
    wait_s = min(DENIAL_WAIT_BARS * options.bar_interval_s + 2.0, DENIAL_WAIT_MAX_S)
    try:
        await asyncio.wait_for(denied.wait(), wait_s)
        probe.first_denial_ms = (time.perf_counter() - sent) * 1000
    except TimeoutError:
        probe.detail = (probe.detail + "; " if probe.detail else "") + (
            f"no order tried within {wait_s:.0f} s of the halt")
    for subscription in watching:
        await subscription.unsubscribe()
    return probe


def run_session(options: PaperOptions, home: Path,
                tick: Callable[[float, RunObserver], None] = lambda elapsed, seen: None
                ) -> tuple[SessionSummary, pd.DataFrame]:
    """Run the session on a fresh stack under `home`; return its summary and its equity / VaR / ES per snapshot
    (the stack is stopped after)."""
    stack = Stack(stack_options(options, home))

    async def watch() -> tuple[SessionSummary, pd.DataFrame]:
        observer = RunObserver(options.strategy_id)
        nc = await stack.connection.connect(follow=True)
        await observer.start(nc)
        try:
            await stack.start_services()
            started = time.monotonic()
            await follow(stack, observer, lambda seen: time.monotonic() - started >= options.duration_s,
                         lambda seen: tick(time.monotonic() - started, seen),
                         stall_timeout_s=max(60.0, 20 * options.bar_interval_s))
            seconds = time.monotonic() - started
            control = await close_with_halt(stack, nc, options)
        finally:
            await observer.stop()
            await nc.close()
        summary = summarize(observer, options, seconds, control)
        summary.run_dir = str(stack.run_dir)
        return summary, equity_frame(observer)

    try:
        stack.start_servers()
        return asyncio.run(watch())
    finally:
        stack.stop()


def write_report(folder: Path, summary: SessionSummary, frame: pd.DataFrame) -> Path:
    """Write report.md, session.json and report.png (equity, drawdown, VaR / ES) into `folder`; return the
    Markdown's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "session.json").write_text(json.dumps(asdict(summary), indent=2, default=str) + "\n")
    s = summary
    if len(frame) >= 2:
        plot_run(folder / "report.png", frame, f"QMP paper session: {s.strategy_id} ({s.source})", s.strategy_id,
                 breaker_events=s.breaker_events)

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2%}"

    def bps(stats: dict[str, float | None]) -> str:
        return "n/a" if stats["mean"] is None else f"mean {stats['mean']:.2f}, p95 {stats['p95']:.2f}"

    def money(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f}"

    lines = [f"# QMP paper session: {s.strategy_id}", "",
             f"`{s.strategy_path}` on the {s.source} feed for {s.duration_s:.0f} s: {s.snapshots} risk snapshots, "
             f"event time {s.first_event} → {s.last_event}.", "",
             "| measure | value |", "|---|---|",
             f"| equity | {money(s.initial_equity)} → {money(s.final_equity)} (PnL {money(s.pnl)}) |",
             f"| max drawdown | {pct(s.max_drawdown)} |",
             f"| VaR / ES 99% (historical, last) | {pct(s.last_var_99)} / {pct(s.last_es_99)} |",
             f"| VaR 99% (highest) | {pct(s.max_var_99)} |",
             f"| orders accepted / denied | {s.orders_accepted} / {s.orders_denied} |",
             f"| fills | {s.fills} |",
             f"| slippage against arrival (bps) | {bps(s.slippage_bps)} |",
             f"| the model's prediction (bps) | {bps(s.model_slippage_bps)} |",
             f"| realized − model (bps; p95 of its size) | {bps(s.model_miss_bps)} |",
             f"| breaker events | {len(s.breaker_events)} |",
             f"| closing halt: reply | {'n/a' if s.control.reply_ms is None else f'{s.control.reply_ms:.1f} ms'}"
             f"{'' if s.control.accepted else ' (refused: ' + s.control.detail + ')'} |",
             f"| closing halt: first order denied | "
             f"{'n/a' if s.control.first_denial_ms is None else f'{s.control.first_denial_ms:.1f} ms'} |", ""]
    if s.denial_reasons:
        lines += ["## Denied orders by reason", ""]
        lines += [f"- {reason}: {count}" for reason, count in sorted(s.denial_reasons.items())] + [""]
    lines += ["## Breaker events", ""]
    lines += [f"- {event.get('event')} `{event.get('breaker')}`: {event.get('detail') or event.get('action')}"
              for event in s.breaker_events] or ["none"]
    if s.control.detail:
        lines += ["", f"Closing halt: {s.control.detail}"]
    if (folder / "report.png").exists():
        lines += ["", "![equity, drawdown and VaR / ES](report.png)"]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
