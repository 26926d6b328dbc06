"""`qmp risk var | report` and `qmp stress` on files, against numpy references on the bundled S&P 500 data."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from qmp_core.datasets import load_sp500_index, load_sp500_prices
from qmp_ops.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def prices_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("risk") / "prices.csv"
    load_sp500_prices("2012-01-01", "2020-12-31", symbols=["AAPL", "JPM", "XOM"]).to_csv(path)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def returns_of(column: str) -> np.ndarray:
    prices = load_sp500_prices("2012-01-01", "2020-12-31")[column].to_numpy()
    return prices[1:] / prices[:-1] - 1.0


def test_risk_var_when_historical_on_a_column_then_matches_numpy_lower_quantile(prices_csv: Path) -> None:
    code, out, _ = run("risk", "var", "--prices", str(prices_csv), "--column", "JPM", "--method", "historical",
                       "--level", "0.99", "--window", "500")
    result = json.loads(out)
    window = returns_of("JPM")[-500:]
    k = math.floor(499 * 0.01)
    assert code == 0
    assert result["var"] == pytest.approx(-np.quantile(window, 0.01, method="lower"), rel=1e-12)
    assert result["es"] == pytest.approx(-np.sort(window)[: k + 1].mean(), rel=1e-12)
    assert (result["observations"], result["as_of"]) == (500, "2020-12-31")


def test_risk_var_when_weights_and_all_methods_then_portfolio_of_weighted_returns_and_horizon_scaled(
    prices_csv: Path,
) -> None:
    code, out, _ = run("risk", "var", "--prices", str(prices_csv), "--weights", "AAPL=0.6,XOM=-0.4", "--method",
                       "all", "--horizon", "10")
    result = json.loads(out)
    pnl = 0.6 * returns_of("AAPL")[-250:] - 0.4 * returns_of("XOM")[-250:]
    one_day = -np.quantile(pnl, 0.01, method="lower")
    assert code == 0 and set(result["methods"]) == {"historical", "normal", "student_t", "cornish_fisher", "fhs_ewma",
                                                   "fhs_garch", "evt"}
    assert result["methods"]["historical"]["var"] == pytest.approx(one_day * math.sqrt(10), rel=1e-12)
    assert all(m["es"] > 0 for m in result["methods"].values())


@pytest.mark.parametrize(("args", "message"), [
    (["--column", "NOPE"], "no column 'NOPE'"),
    ([], "choose one with --column"),
    (["--column", "JPM", "--method", "garch"], "unknown method 'garch'"),
    (["--column", "JPM", "--window", "5000"], "fewer than the window of 5000"),
    (["--column", "JPM", "--level", "1.5"], "--level must be inside"),
    (["--weights", "AAPL=0.5,ZZZ=0.5"], "not in the file"),
])
def test_risk_var_when_bad_input_then_error_and_exit_2_without_a_number(prices_csv: Path, args: list[str],
                                                                       message: str) -> None:
    code, out, err = run("risk", "var", "--prices", str(prices_csv), *args)
    assert code == 2 and message in err and out == ""


@pytest.mark.parametrize(("content", "message"), [
    ("Date,A\n2020-01-01,10\n2020-01-02,abc\n", "'abc' is not a number"),
    ("Date,A\n2020-01-01,10\n2020-01-02,0\n", "is not positive"),
    ("Date,A\n2020-01-01,10\n2020-01-02,\n", "'' is not a number"),
])
def test_risk_var_when_prices_not_numeric_or_not_positive_then_error_names_the_row(tmp_path: Path, content: str,
                                                                                  message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    code, out, err = run("risk", "var", "--prices", str(path), "--window", "1")
    assert code == 2 and message in err and "row 3" in err and out == ""


def test_risk_var_when_file_missing_then_error() -> None:
    code, _, err = run("risk", "var", "--prices", "/nonexistent/prices.csv")
    assert code == 2 and "no such file" in err


def test_risk_report_when_prices_then_backtest_of_every_method_counts_exceptions_like_numpy(prices_csv: Path) -> None:
    code, out, _ = run("risk", "report", "--prices", str(prices_csv), "--column", "AAPL", "--days", "300", "--json")
    result = json.loads(out)
    returns = returns_of("AAPL")
    forecasts = [-np.quantile(returns[t - 250:t], 0.01, method="lower") for t in range(len(returns) - 300,
                                                                                        len(returns))]
    exceptions = int(np.sum(-returns[-300:] > np.array(forecasts)))
    historical = result["methods"]["historical"]
    assert code == 0 and historical["observations"] == 300
    assert historical["exceptions"] == exceptions
    assert historical["zone"] in ("green", "yellow", "red") and 0.0 <= historical["kupiec_p"] <= 1.0
    assert set(result["methods"]) >= {"fhs_garch", "evt"} and "es_z2" in result["methods"]["evt"]


def test_risk_report_when_no_stack_then_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .qmp/connection.json here
    code, _, err = run("risk", "report", "nobody_runs_this")
    assert code == 2 and "qmp up" in err


@pytest.fixture(scope="module")
def stressed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("stress") / "book.csv"
    path.write_text("symbol,quantity,price\nAAPL,1000,100\nJPM,-200,100\nSYNTH1,500,100\n")
    code, out, err = run("stress", "--positions", str(path), "--equity", "100000", "--json", "--monte-carlo",
                         "--paths", "2000", "--seed", "3")
    assert code == 0, err
    return json.loads(out)


def test_stress_when_2008_episode_then_pnl_is_the_book_revalued_with_bundled_returns(stressed: dict) -> None:
    stocks = load_sp500_prices()
    index = load_sp500_index()["SP500"]
    growth = {}
    for symbol, series in (("AAPL", stocks["AAPL"]), ("JPM", stocks["JPM"]), ("SYNTH1", index)):
        before = series.loc[:"2008-09-14"].iloc[-1]
        growth[symbol] = series.loc["2008-11-20"] / before - 1.0
    expected = 1000 * 100 * growth["AAPL"] - 200 * 100 * growth["JPM"] + 500 * 100 * growth["SYNTH1"]
    episode = stressed["scenarios"][0]
    assert episode["scenario"].startswith("2008") and episode["pnl"] == pytest.approx(expected, rel=1e-9)
    # the 24h drawdown in event time: each day against the best equity of the 24 hours before it
    window = {s: (stocks[s] if s != "SYNTH1" else index).loc["2008-09-12":"2008-11-20"] for s in growth}
    exposure = {"AAPL": 100_000.0, "JPM": -20_000.0, "SYNTH1": 50_000.0}
    equity = 100_000.0 + sum(exposure[s] * (window[s] / window[s].iloc[0] - 1.0) for s in exposure)
    days = equity.index
    worst = max(1.0 - equity.iloc[t] / equity[(days >= days[t] - pd.Timedelta(hours=24)) & (days <= days[t])].max()
                for t in range(len(days)))
    assert episode["drawdown_24h"] == pytest.approx(worst, rel=1e-9)
    assert not any(b.startswith("drawdown_24h") for b in episode["breakers"])  # no single day lost 15%
    assert stressed["book"]["proxied_by_index"] == ["SYNTH1"]
    assert episode["risk_after"]["historical"]["var"] > stressed["now"]["risk"]["historical"]["var"]


def test_stress_when_1987_shock_then_loss_is_beta_weighted_and_breakers_listed(stressed: dict) -> None:
    crash = next(s for s in stressed["scenarios"] if s["scenario"].startswith("1987"))
    beta = stressed["book"]["betas"]
    exposure = {"AAPL": 100_000.0, "JPM": -20_000.0, "SYNTH1": 50_000.0}
    expected = sum(-0.205 * beta[s] * e for s, e in exposure.items())
    assert crash["pnl"] == pytest.approx(expected, rel=1e-3)  # betas are rounded to 3 decimals in the report
    assert any(b.startswith("drawdown_24h") for b in crash["breakers"])  # a >15% one-day loss halts
    assert any(b.startswith("stop_loss:AAPL") for b in crash["breakers"])
    vol = next(s for s in stressed["scenarios"] if s["scenario"] == "volatility x3")
    now = stressed["now"]["risk"]["historical"]
    assert vol["risk_after"]["historical"]["var"] == pytest.approx(3 * now["var"], rel=1e-9)
    # a lasting 3x shift peaks near 2x its 20-day average (the average catches up): at the limit's edge
    assert 1.5 < vol["vol_ratio_peak"] < 3.0
    assert bool(vol["breakers"]) == (vol["vol_ratio_peak"] > 2.0)


def test_stress_when_monte_carlo_then_seeded_percentiles_ordered(stressed: dict, tmp_path: Path) -> None:
    mc = stressed["monte_carlo"]
    drawdown = mc["max_drawdown"]
    assert 0.0 < drawdown["p50"] < drawdown["p95"] < drawdown["p99"] <= 1.0
    assert mc["model"]["a"] + mc["model"]["b"] < 1.0 and mc["model"]["nu"] > 4.0


def test_stress_when_neither_strategy_nor_positions_then_error() -> None:
    code, _, err = run("stress")
    assert code == 2 and "give a STRATEGY or --positions FILE" in err


def test_print_snapshot_when_full_snapshot_then_tables_show_methods_positions_and_backtests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from qmp_core.messages import PositionRisk, RiskSnapshot, VarBacktest
    from qmp_ops.cli import risk

    monkeypatch.setattr(risk, "console", Console(width=220))
    snapshot = RiskSnapshot(
        strategy="s1", ts_event=1_600_000_000_000_000_000, equity=1e6, drawdown_24h=0.01, drawdown_max=0.05,
        volatility_ratio=1.2, breakers=["stop_loss:AAPL"], observations=250,
        var={"historical_99": 0.031, "evt_975": 0.027, "pnl_historical_99": 0.02},
        es={"historical_99": 0.04, "evt_975": 0.035},
        positions=[PositionRisk(symbol="AAPL", quantity=10.0, price=80.0, weight=0.2, entry_price=100.0,
                                peak_price=101.0, pnl_from_entry=-0.2, drawdown_from_peak=0.208,
                                var={"historical_99": 0.01}, stop_loss=True)],
        backtests={"historical_99": VarBacktest(observations=250, exceptions=6, expected=2.5, kupiec_p=0.05,
                                                christoffersen_p=0.6, conditional_coverage_p=0.1, zone="yellow",
                                                es_z2=-0.9, es_zone="yellow")},
        errors={"fhs_garch": "insufficient_data: fhs_garch cannot fit 25 scenarios"})
    with risk.console.capture() as captured:
        risk.print_snapshot(snapshot)
    text = captured.get()
    assert "3.10%" in text and "evt" in text and "pnl_historical" in text
    assert "AAPL" in text and "fired" in text and "-20.00%" in text
    assert "yellow" in text and "insufficient_data" in text
