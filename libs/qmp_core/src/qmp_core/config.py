"""Typed settings: frozen msgspec Structs read once, at start, from environment variables `QMP_*`.

A field `nats_url` of a settings Struct is read from `QMP_NATS_URL`. Unknown `QMP_*` variables are
ignored (several services share one environment); a value of the wrong type fails fast at start.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

PREFIX = "QMP_"
T = TypeVar("T", bound=Struct)


class BusSettings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str = ""
    nats_password: str = ""


class DatabaseSettings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"


class ServiceSettings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every service needs: where the bus and database are, its clock mode and telemetry."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str = ""
    nats_password: str = ""
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    clock: str = "replay"
    run_dir: str = ".qmp/run"
    otlp_endpoint: str = ""
    log_level: str = "INFO"


def load_settings(type_: type[T], environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build settings of `type_` from `QMP_<FIELD>` variables, then `overrides`; fail fast on bad values."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(type_):
        raw = env.get(PREFIX + field.name.upper())
        if raw is not None:
            values[field.name] = _parse(raw, field.type)
    values.update(overrides)
    try:
        return msgspec.convert(values, type_, strict=False)
    except msgspec.ValidationError as error:
        raise ValueError(f"invalid {type_.__name__} from {PREFIX}* environment: {error}") from error


def _parse(raw: str, annotation: Any) -> Any:
    """Lists and dicts come as JSON; scalars as text that msgspec converts (strict=False)."""
    text = raw.strip()
    if text.startswith(("[", "{")):
        return msgspec.json.decode(text)
    origin = getattr(annotation, "__origin__", None)
    if annotation is list or origin is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def run_dir(settings: ServiceSettings) -> Path:
    path = Path(settings.run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
