"""`qmp up --set NAME=VALUE` and `qmp settings`: every setting a service reads, checked by the services."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qmp_core.config import SettingInfo, SettingsReport
from qmp_ops.cli.main import app
from qmp_ops.runtime.settings import SettingsError, parse_sets, read_reports, service_sets, setting_name


def report(*names: str, error: str = "") -> SettingsReport:
    return SettingsReport(settings_type="S", error=error, settings=[
        SettingInfo(name=name, variable=f"QMP_{name.upper()}", type="str", default="", value="") for name in names])


def test_setting_name_when_written_any_way_then_one_setting() -> None:
    names = {setting_name(text) for text in ("initial_capital", "initial-capital", "INITIAL_CAPITAL",
                                              "QMP_INITIAL_CAPITAL", " qmp_initial_capital ")}

    assert names == {"initial_capital"}
    assert parse_sets(["a=1", "b=x=y", "a=2", "c="]) == {"a": "2", "b": "x=y", "c": ""}
    with pytest.raises(SettingsError, match="NAME=VALUE"):
        parse_sets(["just_a_name"])


def test_service_sets_when_names_known_then_each_goes_to_the_services_that_read_it() -> None:
    reports = {"risk": report("log_level", "drawdown_halt"), "execution": report("log_level", "initial_capital")}

    sets = service_sets({"log_level": "DEBUG", "drawdown_halt": "0.2"}, reports)

    assert sets == {"risk": {"QMP_LOG_LEVEL": "DEBUG", "QMP_DRAWDOWN_HALT": "0.2"},
                    "execution": {"QMP_LOG_LEVEL": "DEBUG"}}


def test_service_sets_when_unknown_owned_flagged_or_refused_then_one_error_naming_each() -> None:
    reports = {"risk": report("drawdown_halt", "nats_url"),
               "execution": report("initial_capital", "symbols", error="initial_capital: Expected `float`")}

    with pytest.raises(SettingsError) as refused:
        service_sets({"drawdown_hal": "1", "nats_url": "x", "symbols": "3", "initial_capital": "abc"}, reports,
                     {"symbols": "--symbols"})

    why = str(refused.value)
    assert "no service reads a setting 'drawdown_hal' (did you mean drawdown_halt?)" in why
    assert "nats_url is set by the stack itself" in why and "use --symbols" in why
    assert "execution: initial_capital: Expected `float`" in why


def test_read_reports_when_values_set_then_each_service_states_them_in_force() -> None:
    env_sets = {"QMP_INITIAL_CAPITAL": "250000", "QMP_DRAWDOWN_HALT": "0.2"}
    reports = read_reports(env_sets, services=("risk", "execution", "deployer"))
    in_force = {service: {i.name: i.value for i in r.settings} for service, r in reports.items()}

    assert in_force["execution"]["initial_capital"] == 250000.0 and in_force["risk"]["drawdown_halt"] == 0.2
    assert "initial_capital" not in in_force["deployer"] and not any(r.error for r in reports.values())
    assert service_sets({"initial_capital": "250000"}, reports) == {
        "risk": {}, "execution": {"QMP_INITIAL_CAPITAL": "250000"}, "deployer": {}}


def test_up_when_a_setting_is_misspelt_then_refused_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["up", "--set", "initial_capitl=250000"], env={"COLUMNS": "300"})

    assert result.exit_code == 2 and "did you mean initial_capital" in result.output
    assert not (tmp_path / ".qmp").exists()  # no server, no run directory


def test_up_when_capital_given_twice_or_wrong_then_refused_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    twice = CliRunner().invoke(app, ["up", "--capital", "100000", "--set", "initial-capital=5"],
                               env={"COLUMNS": "300"})
    negative = CliRunner().invoke(app, ["up", "--capital", "-1"], env={"COLUMNS": "300"})

    assert twice.exit_code == 2 and "name the same setting" in twice.output
    assert negative.exit_code == 2
    assert not (tmp_path / ".qmp").exists()


def test_settings_when_asked_for_one_service_then_every_setting_with_its_value_in_force() -> None:
    result = CliRunner().invoke(app, ["settings", "deployer", "--json"], env={"QMP_ALERT_QUIET_S": "42"})

    assert result.exit_code == 0, result.output
    settings = {i["name"]: i for i in json.loads(result.output)["deployer"]["settings"]}
    assert settings["alert_quiet_s"]["value"] == 42.0 and settings["alert_quiet_s"]["default"] != 42.0
    assert settings["nats_password"]["secret"]
