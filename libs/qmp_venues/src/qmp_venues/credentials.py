"""A venue's API key and secret: from settings, or from a JSON secrets file that only its owner may read.

One rule for every venue (Alpaca, ccxt exchanges): a secrets file readable by group or others is refused with
the command that fixes it, and missing credentials name the settings to set. The values are never logged.
"""

import json
import stat
from pathlib import Path


class CredentialsError(ValueError):
    """Credentials missing, or a secrets file others may read; the message says which and what to do."""


def load_credentials(venue: str, prefix: str, api_key: str, secret_key: str, secrets_file: str) -> tuple[str, str]:
    """Return (api key, secret) for `venue`, whose settings are named `<prefix>_API_KEY`, `<prefix>_SECRET_KEY`
    and `<prefix>_SECRETS_FILE` (a JSON object with "api_key" and "secret_key", mode 0600)."""
    if secrets_file:
        path = Path(secrets_file)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError as error:
            raise CredentialsError(f"the {venue} secrets file {path} does not exist") from error
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CredentialsError(f"the {venue} secrets file {path} is readable by others "
                                   f"(mode {stat.filemode(mode)}); run: chmod 600 {path}")
        try:
            values = json.loads(path.read_text())
            api_key, secret_key = str(values["api_key"]), str(values["secret_key"])
        except (ValueError, KeyError, TypeError) as error:
            raise CredentialsError(f"the {venue} secrets file {path} must be a JSON object with "
                                   f"'api_key' and 'secret_key'") from error
    if not api_key or not secret_key:
        raise CredentialsError(f"{venue} needs an API key and secret: {prefix}_API_KEY and {prefix}_SECRET_KEY, "
                               f"or {prefix}_SECRETS_FILE (a JSON file, mode 0600)")
    return api_key, secret_key
