"""Settings: read from the environment once, typed, failing fast on a wrong value."""

from typing import Annotated, ClassVar, Literal

import msgspec
import pytest

from qmp_core.config import ServiceSettings, SettingsReport, describe_settings, load_settings, settings_main


def test_load_settings_when_env_has_values_then_typed_and_unknown_ignored():
    settings = load_settings(ServiceSettings, {"QMP_NATS_URL": "nats://x:1", "QMP_OTHER": "1"})
    assert settings.nats_url == "nats://x:1"


def test_load_settings_when_value_has_wrong_type_then_fails_fast_with_field_name():
    class Typed(msgspec.Struct, frozen=True, kw_only=True):
        window: int = 250

    with pytest.raises(ValueError, match="window"):
        load_settings(Typed, {"QMP_WINDOW": "many"})


class Described(ServiceSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    mode: Literal["paper", "live"] = "paper"
    names: list[str] = msgspec.field(default_factory=list)
    api_secret: str = ""

    secret_fields: ClassVar[frozenset[str]] = ServiceSettings.secret_fields | {"api_secret"}


def test_describe_settings_when_environment_sets_some_then_each_with_default_value_and_readable_type() -> None:
    report = describe_settings(Described, {"QMP_LEVEL": "0.25", "QMP_NAMES": "a,b", "QMP_API_SECRET": "hunter2"})
    by_name = {info.name: info for info in report.settings}

    assert report.error == "" and report.settings_type == "Described"
    assert (by_name["level"].type, by_name["level"].default, by_name["level"].value) == ("float ≥ 0.0 ≤ 1.0", 0.5, 0.25)
    assert by_name["mode"].type == '"paper" | "live"' and by_name["names"].value == ["a", "b"]
    assert by_name["names"].type == "list[str]" and by_name["level"].variable == "QMP_LEVEL"
    assert by_name["api_secret"].value == "***" and by_name["api_secret"].secret
    assert "hunter2" not in msgspec.json.encode(report).decode()


def test_settings_main_when_environment_refused_then_report_says_why_and_exits_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QMP_LEVEL", "2.0")

    with pytest.raises(SystemExit) as exited:
        settings_main(Described, ["--settings"])
    report = msgspec.json.decode(capsys.readouterr().out, type=SettingsReport)

    assert exited.value.code == 2 and "level" in report.error and "<= 1.0" in report.error
    assert not settings_main(Described, [])  # not asked: the service runs
