"""`qmp verify`: exit code, report files and the deploy-gate record, through the command line."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qmp_lab.verify.gate import check_deployable
from qmp_ops.cli.main import app

HERE = Path(__file__).resolve().parent


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    return tmp_path


@pytest.mark.parametrize(("strategy", "code", "status"), [("leaky_strategies:CleanMomentum", 0, "pass"),
                                                          ("leaky_strategies:CentredMean", 1, "fail")])
def test_verify_cli_when_walk_forward_run_then_exit_code_report_and_gate_record_agree(in_tmp, strategy, code, status):
    result = CliRunner().invoke(app, ["verify", strategy, "--test", "walk_forward", "--quick", "--start", "2007-01-01",
                                      "--end", "2007-12-31"])

    assert result.exit_code == code, result.output
    reports = list((in_tmp / "reports").glob("verify-*/report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["exit_code"] == code
    assert report["tests"][0]["status"] == status
    assert (reports[0].parent / "report.md").read_text().startswith("# QMP verification")
    assert (reports[0].parent / "walk_forward.png").exists()
    latest = json.loads((in_tmp / ".qmp" / "verify" / strategy.replace(":", "-") / "latest.json").read_text())
    assert latest["tests"]["walk_forward"]["status"] == status
    assert check_deployable(strategy, home=in_tmp / ".qmp")[0] is False  # the other tests have not run


def test_verify_cli_when_strategy_path_unloadable_then_exit_2_with_reason(in_tmp):
    result = CliRunner().invoke(app, ["verify", "no_such_module:Nothing", "--test", "walk_forward"])

    assert result.exit_code == 2
    assert "cannot import module" in result.output


def test_verify_cli_when_import_path_fails_then_alert_command_gets_the_alert(in_tmp):
    # issue 11 #4: --alert-command / --alert-webhook were ignored unless verifying a running strategy id.
    captured = in_tmp / "alert.json"
    command = f"{sys.executable} -c \"import sys; open({str(captured)!r}, 'w').write(sys.stdin.read())\""

    result = CliRunner().invoke(app, ["verify", "leaky_strategies:CentredMean", "--test", "walk_forward", "--quick",
                                      "--start", "2007-01-01", "--end", "2007-12-31", "--alert-command", command])

    assert result.exit_code == 1, result.output
    alert = json.loads(captured.read_text())
    assert alert["strategy"] == "leaky_strategies:CentredMean" and "walk_forward" in alert["reason"]
    assert alert["report"].endswith("report.md")
    assert not (in_tmp / ".qmp" / "trading.lock").exists()  # nothing is running under that path: no lock
