"""The risk service's settings start from the one set of shipped risk defaults, and may override them."""

import msgspec
import pytest

from qmp_core.config import RISK_DEFAULTS, RiskDefaults, load_settings
from qmp_risk.config import RiskSettings


@pytest.mark.parametrize("name", RiskDefaults.__struct_fields__)
def test_settings_when_nothing_set_then_every_risk_default_is_the_shared_one(name: str) -> None:
    settings = load_settings(RiskSettings, {})

    value = getattr(settings, name)

    assert (tuple(value) if isinstance(value, list) else value) == getattr(RISK_DEFAULTS, name)


def test_settings_when_env_overrides_a_threshold_then_that_value_and_the_default_untouched() -> None:
    settings = load_settings(RiskSettings, {"QMP_DRAWDOWN_HALT": "0.1"})

    assert settings.drawdown_halt == 0.1
    assert RISK_DEFAULTS.drawdown_halt == 0.15
    assert msgspec.structs.replace(settings, drawdown_halt=0.2).drawdown_halt == 0.2
