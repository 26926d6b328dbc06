"""`qmp paper`: a strategy in paper on the synthetic live feed for a set time, on a stack of its own, and the session
report: orders, fills beside the slippage model, equity and VaR, and the closing halt measured (the deployer's reply
and the first order execution denies under it)."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qmp_ops.cli.main import app

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
SLOW = pytest.mark.skipif(not os.environ.get("QMP_SLOW"), reason="a 2-minute session: set QMP_SLOW=1")


@pytest.mark.parametrize("duration", ["20s", pytest.param("2m", marks=SLOW)])
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
    seconds = 20 if duration == "20s" else 120
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
