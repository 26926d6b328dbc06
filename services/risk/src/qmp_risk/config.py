"""Risk service settings, read once at start from `QMP_*` environment variables (see `load_settings`)."""

from typing import Annotated, Literal

from msgspec import Meta, field

from qmp_core.config import RISK_DEFAULTS, ServiceSettings
from qmp_core.service import ACK_WAIT_S

PositiveInt = Annotated[int, Meta(ge=1)]
Probability = Annotated[float, Meta(gt=0.0, le=1.0)]
Level = Annotated[float, Meta(gt=0.5, lt=1.0)]
Positive = Annotated[float, Meta(gt=0.0)]

DAY_S = 86_400.0


class RiskSettings(ServiceSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Windows, methods, breaker thresholds and bus timings of the risk service.

    The model's parameters and the breakers' thresholds default to `qmp_core.config.RiskDefaults` (their
    meaning is written there), which the CLI and the verification suite use too.
    """

    var_window: Annotated[int, Meta(ge=2)] = RISK_DEFAULTS.var_window
    min_observations: Annotated[int, Meta(ge=2)] = 20  # below this a snapshot is `insufficient_data`
    var_levels: list[Level] = field(default_factory=lambda: list(RISK_DEFAULTS.var_levels))
    var_horizons: list[PositiveInt] = field(default_factory=lambda: [1, 10])  # h > 1 adds <key>_<h>d (sqrt-time)
    ewma_lambda: Annotated[float, Meta(gt=0.0, lt=1.0)] = RISK_DEFAULTS.ewma_lambda
    evt_threshold: Annotated[float, Meta(gt=0.5, lt=1.0)] = RISK_DEFAULTS.evt_threshold
    backtest_window: Annotated[int, Meta(ge=10)] = 250  # days of forecasts each backtest looks at
    symbol_risk: bool = True  # per-symbol measures for the whole universe on every batch
    symbol_risk_positions: Annotated[int, Meta(ge=0)] = 50  # largest positions whose symbol risk a snapshot carries
    garch_refit_every: PositiveInt = 20  # batches between two GARCH + Student-t fits of a symbol
    garch_max_refits_per_batch: Annotated[int, Meta(ge=0)] = 1  # cap per batch; a big universe refits less often
    drawdown_halt: Probability = RISK_DEFAULTS.drawdown_halt
    drawdown_window_hours: Positive = RISK_DEFAULTS.drawdown_window_hours
    vol_ratio_limit: Positive = RISK_DEFAULTS.vol_ratio_limit
    vol_ratio_release: Positive = RISK_DEFAULTS.vol_ratio_release
    vol_window: Annotated[int, Meta(ge=2)] = RISK_DEFAULTS.vol_window
    vol_average_window: PositiveInt = RISK_DEFAULTS.vol_average_window
    vol_size_multiplier: Probability = RISK_DEFAULTS.vol_size_multiplier
    stop_loss: Probability = RISK_DEFAULTS.stop_loss
    # The account breaker: an account's drawdown over the trailing window, or the Expected Shortfall of its
    # returns at account_es_level, above these halts every strategy trading from it (0: that check is off).
    account_drawdown_halt: Annotated[float, Meta(ge=0.0, le=1.0)] = RISK_DEFAULTS.drawdown_halt
    account_es_limit: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    account_es_level: Level = 0.99
    stale_data_s: Positive = 4.5 * DAY_S  # a held symbol without a bar this long halts (event time)
    news_calendar: str = ""  # JSON list of NewsEvent (start/end as int ns or ISO-8601) read at start
    news_impacts: list[str] = field(default_factory=lambda: ["high"])  # impacts that make a strategy defensive
    news_max_order_fraction: Probability = 0.05  # order-size cap (fraction of equity) in defensive mode
    check_interval_s: Positive = 1.0  # how often stale data and news windows are checked without input
    history_margin: Annotated[int, Meta(ge=0)] = 16  # extra bar rows kept beyond the VaR window
    # Bar rows kept beyond the newest a portfolio may be valued at: bars that run ahead of the books (a replay's
    # lockstep lapsing while a stream elects a leader) never push the rows a valuation uses out of the history,
    # so the FHS filters warm up on the same rows whichever arrives first.
    history_lookahead: Annotated[int, Meta(ge=0)] = 64
    # Listings (venue, symbol) tracked: each costs about 20 KB (price history and per-symbol risk; 10,000 add
    # about 200 MB, tests/bench/bench_risk_flood.py), so this bounds risk's memory; a new listing beyond it is
    # a rejected row with the reason (a dead letter), never a bigger process.
    max_listings: PositiveInt = 10_000
    # Wait for the bars of a portfolio's timestamp. Longer than the ack wait: after a restart both in-flight
    # messages come back redelivered, and the portfolio must not be valued before its bars are (seen in the
    # chaos suite with a 1 s wait against the 2 s ack wait).
    bar_wait_s: Annotated[float, Meta(ge=0.0)] = ACK_WAIT_S + 1.0
    # ... and on, up to this long, while the market-data consumer still has bars to deliver or cannot say (a
    # stream leader being elected after a NATS server died took about 10 s in the cluster chaos test).
    bar_wait_max_s: Annotated[float, Meta(ge=0.0)] = 60.0
    control_timeout_s: Positive = 2.0  # per control request attempt
    control_attempts: PositiveInt = 3  # attempts before a breaker command counts as undelivered
    # before_snapshot: a breaker's command is answered before the snapshot that tripped it is published
    # (the deployer down: risk waits, `degraded`, and the command lands on its own batch, so a replay is
    # unchanged by the outage); next_snapshot: the snapshot goes out and the next one sends it again.
    control_delivery: Literal["before_snapshot", "next_snapshot"] = "before_snapshot"
    # Durable consumers are <consumer_prefix>-bars, -portfolio and -news: what this instance has consumed,
    # and so what it rebuilds from after a restart. A second risk instance (a shadow) takes another prefix.
    consumer_prefix: str = "risk"
    rebuild: bool = True  # at start, rebuild the engine from what the consumers acknowledged (see recovery)

    def consumer(self, stream: Literal["bars", "portfolio", "news"]) -> str:
        return f"{self.consumer_prefix}-{stream}"

    def __post_init__(self) -> None:
        if self.vol_ratio_release >= self.vol_ratio_limit:
            raise ValueError(
                f"vol_ratio_release must be below vol_ratio_limit for hysteresis, got "
                f"{self.vol_ratio_release} >= {self.vol_ratio_limit}"
            )
        if self.min_observations > self.var_window:
            raise ValueError(
                f"min_observations must not exceed var_window, got {self.min_observations} > {self.var_window}"
            )
        if not self.var_levels or len(set(self.var_levels)) != len(self.var_levels):
            raise ValueError(f"var_levels must be distinct levels, got {self.var_levels}")
        if min(self.var_levels) <= self.evt_threshold:
            raise ValueError(f"every VaR level must lie beyond evt_threshold={self.evt_threshold}, got "
                             f"{self.var_levels}")
        if self.vol_window > self.var_window:
            raise ValueError(f"vol_window must not exceed var_window, got {self.vol_window} > {self.var_window}")
