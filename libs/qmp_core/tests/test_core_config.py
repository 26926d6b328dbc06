"""Settings: read from the environment once, typed, failing fast on a wrong value."""

import msgspec
import pytest

from qmp_core.config import ServiceSettings, load_settings


def test_load_settings_when_env_has_values_then_typed_and_unknown_ignored():
    settings = load_settings(ServiceSettings, {"QMP_NATS_URL": "nats://x:1", "QMP_OTHER": "1"})
    assert settings.nats_url == "nats://x:1"


def test_load_settings_when_value_has_wrong_type_then_fails_fast_with_field_name():
    class Typed(msgspec.Struct, frozen=True, kw_only=True):
        window: int = 250

    with pytest.raises(ValueError, match="window"):
        load_settings(Typed, {"QMP_WINDOW": "many"})
