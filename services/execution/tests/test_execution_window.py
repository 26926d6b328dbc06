"""The price window and market statistics (engine/window.py) as the engine uses them."""

import math

import msgspec
import numpy as np
import pytest
from execution_testkit import (
    SID,
    FixedWeights,
    bar,
    config,
    engine_with,
)

from qmp_core.clock import NS_PER_DAY, NS_PER_SECOND


def test_process_when_intraday_bars_then_sigma_and_adv_scaled_to_a_day() -> None:
    minute = 60 * NS_PER_SECOND
    engine = engine_with({SID: FixedWeights({"AAA": 0.001})}, config())
    rng = np.random.default_rng(0)
    closes = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.001, 30)))
    for i, close in enumerate(closes):
        batch = msgspec.structs.replace(bar(0, {"AAA": float(close)}, volume=1_000.0), ts_event=NS_PER_DAY + i * minute)
        result = engine.process(batch).results[SID]

    fill = result.fills[0] if result.fills else engine.hosts[SID]._last.fills[0]  # type: ignore[union-attr]
    assert fill.adv == pytest.approx(1_000.0 * 24 * 60)
    per_bar = float(np.std(np.diff(np.log(closes[-21:])), ddof=1))
    assert fill.daily_vol == pytest.approx(per_bar * math.sqrt(24 * 60), rel=1e-9)
