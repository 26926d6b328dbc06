"""black_swan: the whole stack through crises, with breakers on and with breakers off.

Each episode is replayed through the real services (NATS, PostgreSQL, collector → execution → risk →
deployer as child processes, started by the `StackReplay` the operator side gives, in lockstep on event
time), once with
the risk service's breakers at their configured thresholds and once with them disabled (drawdown halt and
position stop loss at 100%, volatility breaker at 10⁹× its average, stale-data halt never). The strategy
runs at a stated volatility target (its
`target_volatility` setting, 10% a year unless told otherwise): a drawdown limit only means something next
to a risk level, and buy-and-hold of the index lost 56.8% in 2007-2009 and 33.9% in 2020.

Episodes: 2007-2009, Feb-Apr 2020, 2022 (bundled history, each after a year of warm-up so the strategy is
invested when the episode starts), and a 1987-like crash: calm 2016-2017 prices, then the S&P 500's
daily moves of 14-30 October 1987 (approximately: -2.95%, -2.34%, -5.16%, then the -20.47% gap of the
19th, ...) applied to every stock on top of its own idiosyncratic move, replayed from a CSV file.
Passes when the maximum drawdown with breakers stays under 20% in every episode; the drawdown without
them is reported next to it. The Monte Carlo mode replays simulated crises (calm warm-up, then 60 days
block-bootstrapped from the 2008 and 2020 crash days) and reports the p95/p99 maximum drawdown.
"""

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from qmp_core.datasets import load_sp500_index, load_sp500_prices
from qmp_lab.verify.core import (
    Check,
    StrategyTarget,
    Table,
    TestResult,
    VerificationError,
    VerifyContext,
    max_drawdown,
    verdict,
)

NAME = "black_swan"
DRAWDOWN_LIMIT = 0.20
WARMUP_DAYS = 260
# Every breaker of the risk service out of reach: drawdown halt, volatility size cut, per-position stop
# loss, stale-data halt (news windows need a calendar, which these runs do not configure).
BREAKERS_OFF = {"QMP_DRAWDOWN_HALT": "1.0", "QMP_VOL_RATIO_LIMIT": "1e9", "QMP_VOL_RATIO_RELEASE": "1e8",
                "QMP_STOP_LOSS": "1.0", "QMP_STALE_DATA_S": "1e15"}
# S&P 500 daily moves, 14-30 October 1987 (approximate closes); the 19th is the -20.47% gap.
OCTOBER_1987 = (-0.0295, -0.0234, -0.0516, -0.2047, 0.0533, 0.0910, -0.0392, 0.0001, -0.0828, 0.0175, 0.0006,
                0.0493, 0.0281)
GAP_BASE = ("2016-01-04", "2017-10-13")
CRISIS_POOL = (("2008-09-01", "2009-03-31"), ("2020-02-20", "2020-04-30"))


@dataclass(frozen=True)
class Episode:
    name: str
    title: str
    start: str  # first day of the reported window (the replay starts WARMUP_DAYS earlier)
    end: str
    frame: pd.DataFrame | None = field(default=None, compare=False)  # replayed from a file when given

    def prices(self) -> pd.DataFrame:
        """Return the prices replayed: warm-up plus the episode."""
        if self.frame is not None:
            return self.frame
        return load_sp500_prices(warmup_start(self.start), self.end)

    def benchmark(self) -> pd.Series:
        """Return the buy-and-hold reference over the episode window (index, or the equal-weight basket)."""
        if self.frame is None:
            return load_sp500_index(self.start, self.end).iloc[:, 0]
        window = self.frame.loc[pd.Timestamp(self.start):pd.Timestamp(self.end)]
        returns = (window / window.shift(1) - 1.0).mean(axis=1).fillna(0.0)
        return (1.0 + returns).cumprod()


def warmup_start(start: str, days: int = WARMUP_DAYS) -> str:
    dates = load_sp500_index(None, start).index
    return str(dates[max(0, len(dates) - 1 - days)].date())


def gap_1987_frame(rng: np.random.Generator) -> pd.DataFrame:
    """Return calm 2016-2017 prices followed by October 1987's index moves on every stock, then calm days."""
    base = load_sp500_prices(*GAP_BASE)
    returns = (base / base.shift(1) - 1.0).iloc[1:]
    residual = returns.sub(returns.mean(axis=1), axis=0).to_numpy()
    moves = list(OCTOBER_1987) + [0.0] * 10
    picks = rng.integers(0, residual.shape[0], size=len(moves))
    shocked = np.asarray(moves)[:, None] + residual[picks]
    dates = pd.bdate_range(base.index[-1] + pd.Timedelta(days=1), periods=len(moves))
    level = base.iloc[-1].to_numpy() * np.cumprod(1.0 + shocked, axis=0)
    return pd.concat([base, pd.DataFrame(level, index=dates, columns=base.columns)]).rename_axis("date")


def simulated_crisis_frame(rng: np.random.Generator, days: int = 60, block: int = 5) -> pd.DataFrame:
    """Return a calm warm-up followed by `days` of crisis: index moves block-bootstrapped from 2008 and 2020."""
    index = load_sp500_index()
    pool = np.concatenate([(lambda s: (s / s.shift(1) - 1.0).dropna().to_numpy())(index.loc[lo:hi].iloc[:, 0])
                           for lo, hi in CRISIS_POOL])
    market = np.concatenate([pool[(start := int(rng.integers(0, pool.size - block))):start + block]
                             for _ in range(days // block + 1)])[:days]
    base = load_sp500_prices(*GAP_BASE)
    returns = (base / base.shift(1) - 1.0).iloc[1:]
    residual = returns.sub(returns.mean(axis=1), axis=0).to_numpy()
    shocked = market[:, None] + residual[rng.integers(0, residual.shape[0], size=days)]
    dates = pd.bdate_range(base.index[-1] + pd.Timedelta(days=1), periods=days)
    level = base.iloc[-1].to_numpy() * np.cumprod(1.0 + shocked, axis=0)
    return pd.concat([base, pd.DataFrame(level, index=dates, columns=base.columns)]).rename_axis("date")


def default_episodes(rng: np.random.Generator) -> list[Episode]:
    gap = gap_1987_frame(rng)
    crash_row = len(load_sp500_prices(*GAP_BASE))
    return [
        Episode("2007-2009", "global financial crisis, 2007-2009", "2007-01-01", "2009-12-31"),
        Episode("2020", "COVID crash, Feb-Apr 2020", "2020-02-01", "2020-04-30"),
        Episode("2022", "2022 bear market", "2022-01-01", "2022-12-31"),
        Episode("1987-like", "1987-like -20.5% one-day gap", str(gap.index[crash_row - 30].date()),
                str(gap.index[-1].date()), frame=gap),
    ]


# ---------------------------------------------------------------- one replay through the stack
def strategy_config(target: StrategyTarget, vol_target: float | None) -> dict[str, Any] | None:
    """Return the strategy's config with `target_volatility` set to the stated level when it has that setting."""
    strategy = target.build()
    config = strategy.config
    values = msgspec.structs.asdict(config) if isinstance(config, msgspec.Struct) else dict(config or {})
    if vol_target is not None and "target_volatility" in values:
        values["target_volatility"] = vol_target
    return values or None


def replay_env(strategy_id: str, target: StrategyTarget, config: dict[str, Any] | None, episode: Episode,
               breakers: bool, scenario_dir: Path,
               extra: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """Return each service's environment for one replay: source, lockstep, hosted strategy, breaker settings."""
    venue = f"{strategy_id}v"
    collector = {"QMP_VENUE": venue, "QMP_REPLAY_RATE": "0", "QMP_LOCKSTEP_STRATEGY": strategy_id}
    if episode.frame is None:
        collector |= {"QMP_SOURCE": "history", "QMP_START": warmup_start(episode.start), "QMP_END": episode.end}
    else:
        scenario_dir.mkdir(parents=True, exist_ok=True)
        path = scenario_dir / f"{strategy_id}.csv"
        episode.frame.rename_axis("date").to_csv(path)
        collector |= {"QMP_SOURCE": "file", "QMP_FILE": str(path)}
    execution = {"QMP_STRATEGIES": f"{strategy_id}={target.path}", "QMP_VENUES": json.dumps([venue])}
    if config:
        execution["QMP_STRATEGY_CONFIG"] = json.dumps({strategy_id: config})
    if target.pythonpath:
        execution["PYTHONPATH"] = target.pythonpath
    env = {"collector": collector, "execution": execution, "risk": {} if breakers else dict(BREAKERS_OFF)}
    for service, values in (extra or {}).items():
        env.setdefault(service, {}).update(values)
    return env


@dataclass
class Replay:
    episode: str
    breakers: bool
    equity: pd.Series
    benchmark_drawdown: float
    max_drawdown: float
    realized_vol: float
    breaker_events: list[dict[str, Any]]
    accepted: int
    denied: int
    denial_reasons: dict[str, int]
    es_keys: list[str]
    seconds: float


def replay(ctx: VerifyContext, episode: Episode, breakers: bool, home: Path, vol_target: float | None,
           extra_env: dict[str, dict[str, str]] | None = None) -> Replay:
    """Replay one episode through a fresh stack; return the strategy's equity over the episode window."""
    if ctx.stack_replay is None:
        raise VerificationError(f"{NAME} replays through the real services: run it with `qmp verify`, which "
                                "starts them (VerifyContext.stack_replay is not set)")
    started = time.perf_counter()
    strategy_id = "bs" + uuid.uuid4().hex[:10]
    prices = episode.prices()
    env = replay_env(strategy_id, ctx.target, strategy_config(ctx.target, vol_target), episode, breakers,
                     home / "scenarios", extra_env)
    observed = ctx.stack_replay(strategy_id, env, home / "stack", prices.index[-1].normalize().value, ctx.log)
    frame = pd.DataFrame({"ts": pd.to_datetime([s["ts_event"] for s in observed.snapshots], unit="ns"),
                          "equity": [s["equity"] for s in observed.snapshots]})
    equity = frame.drop_duplicates("ts", keep="last").set_index("ts")["equity"].sort_index()
    equity.index = equity.index.normalize()
    window = equity.loc[pd.Timestamp(episode.start):pd.Timestamp(episode.end)]
    if window.empty:
        raise VerificationError(f"{episode.name}: the replay published no risk snapshot inside the episode window")
    since = window.index[0].value
    daily = window.pct_change().dropna()
    return Replay(
        episode=episode.name, breakers=breakers, equity=window,
        benchmark_drawdown=max_drawdown(episode.benchmark().to_numpy()), max_drawdown=max_drawdown(window.to_numpy()),
        realized_vol=float(daily.std() * np.sqrt(252)) if len(daily) > 1 else float("nan"),
        breaker_events=[e for e in observed.breaker_events if e["ts_event"] >= since],
        accepted=observed.accepted, denied=observed.denied, denial_reasons=dict(observed.denial_reasons),
        es_keys=list(observed.es_keys), seconds=time.perf_counter() - started)


def probe_sizing(ctx: VerifyContext) -> list[str]:
    """Return the ES keys execution sized orders with, when every ES exceeds a tiny budget (a short replay)."""
    episode = Episode("sizing-probe", "sizing probe", "2017-03-01", "2017-04-13")  # a calm rise: long books hold
    ctx.log("fat_tail: probing which ES the running services size positions with (short replay)")
    result = replay(ctx, episode, True, ctx.home / "verify", ctx.option("vol_target", 0.10),
                    extra_env={"execution": {"QMP_ES_BUDGET": "0.0001"}})
    return result.es_keys


# ---------------------------------------------------------------- the test
def run(ctx: VerifyContext) -> TestResult:
    vol_target = float(ctx.option("vol_target", 0.10))
    given = ctx.option("episode_list", None)
    episodes = given or default_episodes(ctx.rng(6))
    wanted = ctx.option("episodes", ["2020"] if ctx.quick and not given else None)  # a smoke run: one short crisis
    if wanted:
        episodes = [e for e in episodes if e.name in wanted]
        if not episodes:
            raise VerificationError(f"no episode named {wanted}; expected some of "
                                    f"{[e.name for e in default_episodes(ctx.rng(6))]}")
    home = ctx.home / "verify"
    replays: list[Replay] = []
    for episode in episodes:
        for breakers in (True, False):
            ctx.log(f"black_swan: {episode.title}, breakers {'on' if breakers else 'off'}")
            replays.append(replay(ctx, episode, breakers, home, vol_target))
    rows, checks = [], []
    for episode in episodes:
        on = next(r for r in replays if r.episode == episode.name and r.breakers)
        off = next(r for r in replays if r.episode == episode.name and not r.breakers)
        checks.append(Check(f"{episode.name}: max drawdown with breakers < {DRAWDOWN_LIMIT:.0%}",
                            on.max_drawdown < DRAWDOWN_LIMIT,
                            f"{on.max_drawdown:.1%} with breakers, {off.max_drawdown:.1%} without "
                            f"(buy and hold {on.benchmark_drawdown:.1%}); {len(on.breaker_events)} breaker events, "
                            f"{on.denied} orders denied"))
        rows.append([episode.title, episode.start, episode.end, on.max_drawdown, off.max_drawdown,
                     on.benchmark_drawdown, on.realized_vol, len(on.breaker_events),
                     ", ".join(sorted({e["breaker"] for e in on.breaker_events})) or "none", on.denied])
    metrics: dict[str, Any] = {
        "vol_target": vol_target, "drawdown_limit": DRAWDOWN_LIMIT,
        "episodes": {r.episode + (" breakers on" if r.breakers else " breakers off"): {
            "max_drawdown": r.max_drawdown, "benchmark_drawdown": r.benchmark_drawdown, "realized_vol": r.realized_vol,
            "breaker_events": r.breaker_events, "orders_accepted": r.accepted, "orders_denied": r.denied,
            "denial_reasons": r.denial_reasons, "seconds": r.seconds} for r in replays},
    }
    tables = [Table(f"Crisis replays through the stack at a {vol_target:.0%} volatility target",
                    ["episode", "from", "to", "max DD breakers on", "max DD breakers off", "buy & hold DD",
                     "realized vol (on)", "breaker events", "breakers", "orders denied"], rows)]
    paths = int(ctx.option("monte_carlo", 0))
    if paths > 0:
        mc = monte_carlo(ctx, paths, vol_target, home)
        metrics["monte_carlo"] = mc
        checks.append(Check("Monte Carlo max drawdown", None,
                            f"{paths} simulated crises: breakers on p95 {mc['on']['p95']:.1%}, p99 "
                            f"{mc['on']['p99']:.1%}; breakers off p95 {mc['off']['p95']:.1%}, "
                            f"p99 {mc['off']['p99']:.1%}"))
        tables.append(Table("Monte Carlo: max drawdown over simulated crises", ["breakers", "paths", "median", "p95",
                                                                               "p99", "worst"],
                            [[mode, paths, mc[mode]["p50"], mc[mode]["p95"], mc[mode]["p99"], mc[mode]["max"]]
                             for mode in ("on", "off")]))
    worst = max(replays, key=lambda r: r.max_drawdown if r.breakers else -1.0)
    result = TestResult(
        name=NAME, status=verdict(checks),
        summary=(f"at a {vol_target:.0%} vol target, worst drawdown with breakers {worst.max_drawdown:.1%} "
                 f"({worst.episode}); without: " + ", ".join(
                     f"{r.episode} {r.max_drawdown:.1%}" for r in replays if not r.breakers)),
        checks=checks, metrics=metrics, tables=tables)
    result.charts = [_chart(ctx, episodes, replays)]
    return result


def monte_carlo(ctx: VerifyContext, paths: int, vol_target: float, home: Path) -> dict[str, Any]:
    """Replay `paths` simulated crises with breakers on and off; return drawdown quantiles per mode."""
    rng = ctx.rng(7)
    drawdowns: dict[str, list[float]] = {"on": [], "off": []}
    for k in range(paths):
        frame = simulated_crisis_frame(rng)
        crash_row = len(load_sp500_prices(*GAP_BASE))
        episode = Episode(f"mc{k}", f"simulated crisis {k + 1}", str(frame.index[crash_row - 5].date()),
                          str(frame.index[-1].date()), frame=frame)
        for breakers in (True, False):
            ctx.log(f"black_swan: Monte Carlo path {k + 1}/{paths}, breakers {'on' if breakers else 'off'}")
            drawdowns["on" if breakers else "off"].append(
                replay(ctx, episode, breakers, home, vol_target).max_drawdown)
    return {mode: {"p50": float(np.quantile(v, 0.5)), "p95": float(np.quantile(v, 0.95)),
                   "p99": float(np.quantile(v, 0.99)), "max": float(np.max(v)), "drawdowns": v}
            for mode, v in drawdowns.items()}


def _chart(ctx: VerifyContext, episodes: list[Episode], replays: list[Replay]) -> str:
    from qmp_lab.verify.report import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(len(episodes), 2, figsize=(12, 3.2 * len(episodes)), squeeze=False)
    for row, episode in enumerate(episodes):
        bench = episode.benchmark()
        for r in (r for r in replays if r.episode == episode.name):
            label = "breakers on" if r.breakers else "breakers off"
            axes[row, 0].plot(r.equity.index, r.equity / r.equity.iloc[0], label=label)
            axes[row, 1].plot(r.equity.index, -(1 - r.equity / r.equity.cummax()), label=label)
        bench = bench / bench.iloc[0]
        axes[row, 0].plot(bench.index, bench.values, color="tab:gray", alpha=0.7, label="buy and hold")
        axes[row, 1].plot(bench.index, -(1 - bench / bench.cummax()), color="tab:gray", alpha=0.7,
                          label="buy and hold")
        axes[row, 1].axhline(-DRAWDOWN_LIMIT, color="tab:red", linestyle="--", linewidth=0.8)
        axes[row, 0].set_title(f"{episode.title}: equity (start = 1)")
        axes[row, 1].set_title(f"{episode.title}: drawdown (limit {DRAWDOWN_LIMIT:.0%})")
        axes[row, 0].legend(fontsize=7)
        axes[row, 1].legend(fontsize=7)
    figure.tight_layout()
    name = f"{NAME}.png"
    figure.savefig(ctx.out_dir / name, dpi=90)
    plt.close(figure)
    return name
