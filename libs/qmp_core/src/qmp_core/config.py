"""Typed settings: frozen msgspec Structs read once, at start, from environment variables `QMP_*`.

A field `nats_url` of a settings Struct is read from `QMP_NATS_URL`. Unknown `QMP_*` variables are
ignored (several services share one environment); a value of the wrong type fails fast at start.
"""

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

import msgspec
from msgspec import Struct

PREFIX = "QMP_"
T = TypeVar("T", bound=Struct)


class RiskDefaults(Struct, frozen=True, kw_only=True):
    """The risk model's parameters and the breakers' thresholds, as shipped.

    One home for these numbers: the risk service's settings start from them (and `QMP_*` overrides them
    there), and `qmp risk` / `qmp stress` / the verification suite use them, so an offline answer is the
    answer the running service would give.
    """

    var_window: int = 250  # returns per historical-simulation scenario set
    var_levels: tuple[float, ...] = (0.95, 0.975, 0.99)
    ewma_lambda: float = 0.94  # FHS-EWMA decay (RiskMetrics)
    evt_threshold: float = 0.90  # loss quantile above which EVT fits a GPD
    drawdown_halt: float = 0.15  # drawdown over the trailing window that halts the strategy
    drawdown_window_hours: float = 24.0  # event time
    vol_ratio_limit: float = 2.0  # realized vol / its average above this reduces order size
    vol_ratio_release: float = 1.5  # ... and below this restores it (hysteresis)
    vol_window: int = 10  # returns in one realized-vol estimate
    vol_average_window: int = 20  # realized-vol estimates averaged ("its 20-day average")
    vol_size_multiplier: float = 0.5  # order-size factor while the volatility breaker is tripped
    stop_loss: float = 0.15  # a position down this much from its entry is closed, once


RISK_DEFAULTS = RiskDefaults()


class StreamStorage(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How every stream and KV bucket is stored: its copies across a cluster's servers, and compression.

    Read by whoever declares the streams (`qmp up`, `qmp init`) from `QMP_STREAM_*`. Three replicas keep
    every stream available and nothing acknowledged lost while one server of a three-server cluster is down
    (a single server holds one copy); s2 compression trades a little CPU for disk.
    """

    stream_replicas: int = 1
    stream_compression: Literal["none", "s2"] = "none"

    def __post_init__(self) -> None:
        if not 1 <= self.stream_replicas <= 5:
            raise ValueError(f"QMP_STREAM_REPLICAS must be 1 to 5 (JetStream's limit), got {self.stream_replicas}")


class Retention(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long and how much every stream and KV bucket keeps: the bus's disk is bounded by these.

    Read by whoever declares the streams (`qmp up`, `qmp init`) from `QMP_RETENTION_*`; a stream at its
    size limit drops its oldest messages. The defaults sum to under 3.5 GB, inside the embedded server's
    4 GB file store (JetStream reserves each stream's `max_bytes` against it).
    """

    retention_market_data_days: float = 30.0
    retention_market_data_mb: int = 1024
    retention_ingest_days: float = 7.0
    retention_ingest_mb: int = 256
    retention_exec_days: float = 365.0
    retention_exec_mb: int = 1024
    retention_risk_days: float = 90.0
    retention_risk_mb: int = 512
    retention_audit_days: float = 3650.0  # the audit trail: who changed what, kept for years
    retention_audit_mb: int = 256
    retention_deploy_days: float = 3650.0
    retention_deploy_mb: int = 64
    retention_dlq_days: float = 30.0
    retention_dlq_mb: int = 256
    retention_control_history: int = 16  # entries kept per key of the trading-state bucket
    retention_control_mb: int = 32
    retention_rollouts_mb: int = 32

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"QMP_{name.upper()} must be positive, got {getattr(self, name)}")


class ServiceSettings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every service needs: where the bus and database are, its clock mode and telemetry."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str = ""
    nats_password: str = ""
    nats_tls_ca: str = ""  # a CA file: connect with TLS and accept only a server certificate it signed
    # TLS to PostgreSQL rides in the URL: `?sslmode=verify-full&sslrootcert=<CA file>`
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    clock: str = "replay"
    run_dir: str = ".qmp/run"
    otlp_endpoint: str = ""
    otlp_protocol: Literal["http", "grpc"] = "http"  # OTLP over HTTP (<endpoint>/v1/traces) or gRPC (<endpoint>)
    tracing: bool = True  # record spans (to otlp_endpoint, else the run directory); false: none at all
    log_level: str = "INFO"
    metrics_port: int = 0  # serve Prometheus metrics on <metrics_host>:<port>/metrics; 0: not served
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 where Prometheus scrapes from another host (a container)

    # Fields never shown: settings appear in logs and errors, secrets must not. A subclass adds its own.
    secret_fields: ClassVar[frozenset[str]] = frozenset({"nats_password"})

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'***' if name in self.secret_fields and getattr(self, name) else repr(getattr(self, name))}"
            for name in self.__struct_fields__)
        return f"{type(self).__name__}({shown})"


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


class SettingInfo(Struct, frozen=True, kw_only=True):
    """One setting a service reads: its variable, type, default and the value in force (secrets masked)."""

    name: str
    variable: str
    type: str
    default: Any
    value: Any
    secret: bool = False


class SettingsReport(Struct, frozen=True, kw_only=True):
    """What `python -m qmp_<service> --settings` prints: every setting, or why the environment is refused."""

    settings_type: str
    settings: list[SettingInfo]
    error: str = ""


def describe_settings(type_: type[ServiceSettings], environ: Mapping[str, str] | None = None) -> SettingsReport:
    """Describe every setting of `type_` with the value the environment puts in force (or its error)."""
    error, loaded = "", None
    try:
        loaded = load_settings(type_, environ)
    except ValueError as failure:
        error = str(failure)
    infos = []
    for field in msgspec.structs.fields(type_):
        default = field.default if field.default is not msgspec.NODEFAULT else (
            field.default_factory() if field.default_factory is not msgspec.NODEFAULT else None)
        secret = field.name in type_.secret_fields
        value = getattr(loaded, field.name) if loaded is not None else None
        infos.append(SettingInfo(
            name=field.name, variable=PREFIX + field.name.upper(), type=_type_name(field.type),
            default=_shown(default), value="***" if secret and value else _shown(value), secret=secret))
    return SettingsReport(settings_type=type_.__name__, settings=infos, error=error)


def settings_main(type_: type[ServiceSettings], argv: list[str]) -> bool:
    """Answer `--settings` on a service's command line (print the report as JSON); False if not asked.

    The one place a service's settings are listed, for `qmp settings` and `qmp up --set`: a setting added
    to a service's settings class is known to the CLI with no second list to keep.
    """
    if "--settings" not in argv:
        return False
    report = describe_settings(type_)
    sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    if report.error:
        raise SystemExit(2)
    return True


def _type_name(annotation: Any) -> str:
    """A type as a person reads it: `float ≥ 0 ≤ 1`, `list[float]`, `"paper" | "external"`."""
    if get_origin(annotation) is Annotated:
        base, *metadata = get_args(annotation)
        bounds = [f"{sign} {getattr(meta, key)}" for meta in metadata if isinstance(meta, msgspec.Meta)
                  for key, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
                  if getattr(meta, key) is not None]
        return " ".join([_type_name(base), *bounds])
    if get_origin(annotation) is Literal:
        return " | ".join(json.dumps(choice) for choice in get_args(annotation))
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(arg) for arg in args)}]"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _shown(value: Any) -> Any:
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return repr(value)


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
