"""`qmp paper`: a strategy in paper on the synthetic live feed for a set time, on a stack of its own, and the session
report: orders, fills beside the slippage model, equity and VaR, and the closing halt measured (the deployer's reply
and the first order execution denies under it)."""

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qmp_ops.cli.main import app
from qmp_venues.fake_exchange import FakeExchange

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
SLOW = pytest.mark.skipif(not os.environ.get("QMP_SLOW"), reason="a 2-minute session: set QMP_SLOW=1")


@pytest.mark.parametrize("duration", ["12s", pytest.param("2m", marks=SLOW)])
def test_paper_when_a_session_runs_then_its_report_has_orders_fills_against_the_model_and_control_latency(
        duration: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique_id: str) -> None:
    monkeypatch.chdir(tmp_path)  # the stack lives under ./.qmp, as for every qmp command
    strategy = "paper" + unique_id[:6]

    result = CliRunner().invoke(app, [
        "paper", "qmp_test_strategies:SecondRebalancer", "--id", strategy, "--duration", duration,
        "--bar-seconds", "0.5", "--symbols", "8", "--capital", "100000",
        "--pythonpath", str(ROOT / "tests" / "support"),
        "--reports", str(tmp_path / "reports")])

    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "reports").glob(f"paper-{strategy}-*")
    session = json.loads((folder / "session.json").read_text())
    seconds = 12 if duration == "12s" else 120
    assert seconds <= session["duration_s"] < seconds + 15
    assert session["snapshots"] >= seconds  # two bars a second, each a snapshot once risk has the book
    # Orders work over several bars (the paper broker takes at most a tenth of a bar's volume), so each fills
    # many times; a fill after the decision's bar carries the price's drift since, beside the model's cost.
    assert session["orders_accepted"] >= 1 and session["fills"] >= 2 * session["orders_accepted"]
    assert session["model_slippage_bps"]["mean"] > 0 and session["model_miss_bps"]["p95"] is not None
    assert session["denial_reasons"].get("HALTED", 0) >= 1  # the closing halt's
    control = session["control"]
    assert control["accepted"] is True and 0 < control["reply_ms"] < 1_000
    assert control["first_denial_ms"] is not None and control["first_denial_ms"] < 5_000
    assert session["initial_equity"] == pytest.approx(100_000, rel=0.01)  # the seed's `--capital 100000`
    assert session["final_equity"] > 0 and session["last_var_99"] is not None
    report = (folder / "report.md").read_text()
    assert f"# QMP paper session: {strategy}" in report and "closing halt: first order denied" in report
    assert (folder / "report.png").stat().st_size > 10_000


@contextmanager
def exchange_in_a_thread(minutes: int) -> Iterator[FakeExchange]:
    """The fake Binance on its own event loop (the CLI runs its own): `minutes` closed one-minute bars of BTC/USDT
    and ETH/USDT up to now."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = FakeExchange()
    first = (int(time.time() * 1000) // 60_000 - minutes) * 60_000
    fake.add_bars("BTCUSDT", first, [60_000.0 * (1 + 0.001 * ((i * 7) % 5 - 2)) for i in range(minutes)])
    fake.add_bars("ETHUSDT", first, [3_000.0 * (1 + 0.001 * ((i * 3) % 5 - 2)) for i in range(minutes)])
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_paper_when_the_feed_is_an_exchange_then_its_bars_through_ccxt_are_traded_on_paper(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique_id: str) -> None:
    monkeypatch.chdir(tmp_path)
    strategy = "paperx" + unique_id[:6]

    with exchange_in_a_thread(minutes=90) as exchange:
        result = CliRunner().invoke(app, [
            "paper", "qmp_test_strategies:EveryBarHolder", "--id", strategy, "--duration", "10s",
            "--source", "exchange:binance", "--venue-symbols", "BTC/USDT,ETH/USDT", "--venue-url", exchange.url,
            "--pythonpath", str(ROOT / "tests" / "support"), "--reports", str(tmp_path / "reports")])
    wrong = CliRunner().invoke(app, ["paper", "x:Y", "--source", "exchange:binance"])

    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "reports").glob(f"paper-{strategy}-*")
    session = json.loads((folder / "session.json").read_text())
    assert session["source"] == "exchange" and session["snapshots"] >= 60  # the backfill's closed bars, stamped
    assert session["orders_accepted"] >= 2 and session["fills"] >= 2  # at their closes, each a book
    assert session["control"]["accepted"] is True
    assert wrong.exit_code == 2 and "--venue-symbols" in wrong.output
