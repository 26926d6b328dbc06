"""NautilusTrader's BacktestEngine on `bench_replay.py`'s market file and strategy: run by that benchmark with
`--nautilus PYTHON`, a Python that has `nautilus_trader` installed (never a dependency of the stack).

The same rule as `qmp_test_strategies.InstrumentMomentum`: each day, hold 0.9/N of the starting capital in
every symbol whose close is above its close 20 days before, nothing in the others; market orders on a
netting margin account. Prints one JSON object: the seconds to build the bars and to run the engine.

    PYTHON tests/bench/nautilus_replay.py market.csv
"""

import json
import sys
import time
from collections import deque
from decimal import Decimal

import pandas as pd
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import AccountType, OmsType, OrderSide
from nautilus_trader.model.identifiers import Venue
from nautilus_trader.model.objects import Money, Quantity
from nautilus_trader.persistence.wranglers import BarDataWrangler
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.trading.strategy import Strategy

VENUE = "XNAS"
CAPITAL = 1_000_000
LOOKBACK = 20
GROSS = 0.9


class MomentumConfig(StrategyConfig, frozen=True):
    bar_types: list[str]


class InstrumentMomentum(Strategy):
    def __init__(self, config: MomentumConfig) -> None:
        super().__init__(config)
        self.bar_types = [BarType.from_str(text) for text in config.bar_types]
        self.closes: dict = {}
        self.orders = 0

    def on_start(self) -> None:
        for bar_type in self.bar_types:
            self.closes[bar_type.instrument_id] = deque(maxlen=LOOKBACK + 1)
            self.subscribe_bars(bar_type)

    def on_bar(self, bar: Bar) -> None:
        instrument_id = bar.bar_type.instrument_id
        closes = self.closes[instrument_id]
        close = float(bar.close)
        closes.append(close)
        if len(closes) <= LOOKBACK:
            return
        target = int(GROSS * CAPITAL / len(self.bar_types) / close) if close > closes[0] else 0
        held = self.portfolio.net_position(instrument_id)
        delta = target - int(held)
        if delta == 0:
            return
        order = self.order_factory.market(instrument_id, OrderSide.BUY if delta > 0 else OrderSide.SELL,
                                          Quantity.from_int(abs(delta)))
        self.submit_order(order)
        self.orders += 1


def main() -> None:
    frame = pd.read_csv(sys.argv[1])
    dates = pd.to_datetime(frame.pop("date")) + pd.Timedelta(hours=21)
    started = time.perf_counter()
    engine = BacktestEngine(BacktestEngineConfig(logging=LoggingConfig(bypass_logging=True)))
    engine.add_venue(venue=Venue(VENUE), oms_type=OmsType.NETTING, account_type=AccountType.MARGIN,
                     starting_balances=[Money(CAPITAL, USD)], base_currency=USD, default_leverage=Decimal(1))
    bar_types = []
    bars = 0
    for symbol in frame.columns:
        instrument = TestInstrumentProvider.equity(symbol=symbol, venue=VENUE)
        engine.add_instrument(instrument)
        bar_type = BarType.from_str(f"{instrument.id}-1-DAY-LAST-EXTERNAL")
        closes = frame[symbol].to_numpy()
        data = pd.DataFrame({"open": closes, "high": closes, "low": closes, "close": closes,
                             "volume": 1e9}, index=pd.DatetimeIndex(dates, tz="UTC"))
        wrangled = BarDataWrangler(bar_type, instrument).process(data)
        engine.add_data(wrangled)
        bars += len(wrangled)
        bar_types.append(str(bar_type))
    strategy = InstrumentMomentum(MomentumConfig(bar_types=bar_types))
    engine.add_strategy(strategy)
    built = time.perf_counter()
    engine.run()
    ran = time.perf_counter()
    print(json.dumps({"bars": bars, "orders": strategy.orders, "build_seconds": round(built - started, 3),
                      "run_seconds": round(ran - built, 3), "bars_per_s_run": round(bars / (ran - built), 1),
                      "bars_per_s_with_build": round(bars / (ran - started), 1)}))
    engine.dispose()


if __name__ == "__main__":
    main()
