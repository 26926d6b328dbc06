"""Breaker boundaries: where exactly each one trips, stated once for the risk service and `qmp stress`."""

from qmp_core.breakers import (
    drawdown_trips,
    stop_loss_breaker,
    stop_loss_trips,
    volatility_releases,
    volatility_trips,
)
from qmp_core.config import RISK_DEFAULTS


def test_drawdown_trips_when_strictly_above_the_halt_level_only() -> None:
    assert not drawdown_trips(0.15, RISK_DEFAULTS.drawdown_halt)
    assert drawdown_trips(0.1500001, RISK_DEFAULTS.drawdown_halt)


def test_volatility_when_between_release_and_limit_then_neither_trips_nor_releases() -> None:
    assert volatility_trips(2.01, RISK_DEFAULTS.vol_ratio_limit) and not volatility_trips(2.0, 2.0)
    assert volatility_releases(1.49, RISK_DEFAULTS.vol_ratio_release)
    assert not volatility_trips(1.8, 2.0) and not volatility_releases(1.8, 1.5)  # the hysteresis band


def test_stop_loss_trips_when_loss_reaches_the_level_for_long_and_short_alike() -> None:
    assert stop_loss_trips(-0.15, RISK_DEFAULTS.stop_loss)
    assert not stop_loss_trips(-0.1499, RISK_DEFAULTS.stop_loss)
    assert stop_loss_breaker("AAPL") == "stop_loss:AAPL"
