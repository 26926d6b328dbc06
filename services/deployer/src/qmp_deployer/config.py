"""Deployer settings, read once at start from `QMP_*` environment variables (see `load_settings`)."""

from typing import Annotated, Literal

from msgspec import Meta, field

from qmp_core.config import ServiceSettings

Positive = Annotated[float, Meta(gt=0.0)]


class DeployerSettings(ServiceSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where rollout plans come from, gate and lease timings, and what the probes measure."""

    plan_file: str = ""  # one more plan (TOML or JSON), known by its `name`; the bundled `default` is always there
    plan_dir: str = ""  # every *.toml / *.json plan in this folder
    gate_interval_s: Annotated[float, Meta(ge=0.0)] = 0.0  # > 0 overrides every plan's gate interval
    lease_ttl_s: Positive = 10.0  # wall time; a standby takes over this long after the leader stops renewing
    instance_id: str = ""  # default: host-pid
    tick_s: Positive = 1.0  # wall seconds between evaluation checks and lease renewals' floor
    probe_interval_s: Positive = 10.0  # wall seconds between latency and memory probes
    probe_timeout_s: Positive = 2.0
    latency_service: str = "execution"  # API latency without a REST broker: this service's health round trip
    broker_instance: str = "execution"  # `qmp.broker.<instance>`: broker latency, and the endpoint switch action
    memory_probe: Literal["local", "health", "off"] = "local"  # local: psutil on the pids health replies give
    memory_services: list[str] = field(default_factory=lambda: ["execution", "risk", "collector"])
    replay_grace_s: Positive = 2.0  # replay: a strategy without snapshots this long (wall) is evaluated anyway
    deploy_strategies: list[str] = field(default_factory=list)  # strategies that may be deployed; empty: any
    # Alerts to people: apprise URLs (slack://..., tgram://..., mailto://..., json://host/path), comma-separated
    # or a JSON list; one alert per strategy and kind per `alert_quiet_s` (wall seconds).
    alert_urls: list[str] = field(default_factory=list)
    alert_quiet_s: Annotated[float, Meta(ge=0.0)] = 300.0
