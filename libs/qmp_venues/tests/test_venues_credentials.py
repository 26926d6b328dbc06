"""A venue's credentials: from settings or a secrets file only its owner may read."""

import os
from pathlib import Path

import pytest

from qmp_venues.credentials import CredentialsError, load_credentials


def test_credentials_when_secrets_file_readable_by_others_then_refused_with_the_fix(tmp_path: Path) -> None:
    secrets = tmp_path / "alpaca.json"
    secrets.write_text('{"api_key": "k", "secret_key": "s"}')
    os.chmod(secrets, 0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        load_credentials("Alpaca", "QMP_ALPACA", "", "", str(secrets))
    os.chmod(secrets, 0o600)
    assert load_credentials("Alpaca", "QMP_ALPACA", "", "", str(secrets)) == ("k", "s")
    with pytest.raises(CredentialsError, match="QMP_ALPACA_API_KEY"):
        load_credentials("Alpaca", "QMP_ALPACA", "", "", "")


def test_credentials_when_secrets_file_missing_or_malformed_then_refused_naming_the_file(tmp_path: Path) -> None:
    secrets = tmp_path / "exchange.json"
    with pytest.raises(CredentialsError, match="does not exist"):
        load_credentials("binance", "QMP_EXCHANGE", "", "", str(secrets))
    secrets.write_text('{"api_key": "k"}')
    os.chmod(secrets, 0o600)
    with pytest.raises(CredentialsError, match="'api_key' and 'secret_key'"):
        load_credentials("binance", "QMP_EXCHANGE", "", "", str(secrets))
    assert load_credentials("binance", "QMP_EXCHANGE", "key", "secret", "") == ("key", "secret")
