"""Rollout plans: the phases and the monitoring table, one config file (TOML or JSON) read with msgspec.

A plan is validated when it is read (a bad plan fails fast at start): phase names unique, allocations
never decreasing (so a rollback never raises capital), paper phases before live ones, every warning
below its critical level, every blackout ending after it starts.
"""

import hashlib
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from qmp_core.clock import NS_PER_SECOND
from qmp_core.messages import Env, Fraction, PositiveFraction, RolloutPhase, Token

Action = Literal[
    "reduce_allocation",  # allocation × action_factor, once per phase (the capital decision sticks)
    "halt_new_positions",  # defensive: only orders that shrink exposure, while the breach lasts
    "reduce_order_size",  # size multiplier action_factor, while the breach lasts
    "switch_endpoint",  # pin the execution broker to its backup endpoint, while the breach lasts
    "restart_service",  # advisory: the supervisor has no restart verb yet
    "alert",  # advisory
]
RISK_SOURCES = ("drawdown_24h", "drawdown_max")
VAR_PREFIX = "var:"
PROBE_SOURCES = ("latency_ms", "memory_mb")
FILL_SOURCES = ("slippage_bps",)
NonNegative = Annotated[float, Meta(ge=0.0)]


class MetricSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One row of the monitoring table: where the value comes from, its levels and its action."""

    source: str  # drawdown_24h | drawdown_max | var:<method>_<level> | slippage_bps | latency_ms | memory_mb
    warning: float
    critical: float
    action: Action
    action_factor: PositiveFraction = 0.5
    failure_limit: Annotated[int, Meta(ge=1)] = 1  # consecutive critical evaluations before a rollback
    stale_after_s: NonNegative = 0.0  # older readings are stale; 0: never stale
    fail_closed: bool = False  # stale data halts new positions
    per_allocation: bool = False  # divide by the allocation: a loss fraction of the allocated capital
    window: Annotated[int, Meta(ge=1)] = 20  # fills averaged (slippage)
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.warning >= self.critical:
            raise ValueError(f"warning must be below critical, got {self.warning} >= {self.critical}")
        known = (*RISK_SOURCES, *PROBE_SOURCES, *FILL_SOURCES)
        if self.source not in known and not (self.source.startswith(VAR_PREFIX) and len(self.source) > 4):
            raise ValueError(f"source must be one of {known} or var:<method>_<level>, got {self.source!r}")

    @property
    def stale_after_ns(self) -> int:
        return int(self.stale_after_s * NS_PER_SECOND)


class PhaseSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Token
    env: Env
    allocation: Fraction
    min_soak_h: NonNegative
    min_fills: Annotated[int, Meta(ge=0)] = 0
    min_notional_hours: NonNegative = 0.0  # gross exposure × hours held while soaking
    approval: bool = False  # entering this phase waits for an explicit approval

    def rollout_phase(self) -> RolloutPhase:
        return RolloutPhase(name=self.name, env=self.env, allocation=self.allocation,
                            min_soak_s=self.min_soak_h * 3600.0, min_fills=self.min_fills,
                            min_notional_hours=self.min_notional_hours, approval=self.approval)


class Blackout(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A calendar window (event time) in which no promotion happens."""

    start: datetime
    end: datetime
    reason: str = "blackout"

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"blackout times need a timezone (e.g. 2008-09-15T00:00:00Z), got {self.start}")
        if self.end <= self.start:
            raise ValueError(f"blackout must end after it starts, got {self.start} .. {self.end}")

    def contains(self, ts_ns: int) -> bool:
        return _ns(self.start) <= ts_ns < _ns(self.end)


class Plan(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Token
    phases: Annotated[list[PhaseSpec], Meta(min_length=1)]
    metrics: dict[str, MetricSpec]
    gate_interval_s: Annotated[float, Meta(gt=0.0)] = 60.0
    blackouts: list[Blackout] = []
    portfolio_var_limit: NonNegative = 0.0  # Σ VaR × equity / Σ equity after a promotion; 0: off
    portfolio_var_key: str = "historical_95"

    def __post_init__(self) -> None:
        names = [phase.name for phase in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        for before, after in zip(self.phases, self.phases[1:], strict=False):
            if after.allocation < before.allocation:
                raise ValueError(f"allocations must not decrease, got {before.name} {before.allocation} then "
                                 f"{after.name} {after.allocation}")
            if before.env == "live" and after.env == "paper":
                raise ValueError(f"paper phases come before live ones, got {before.name} then {after.name}")

    @property
    def gate_interval_ns(self) -> int:
        return int(self.gate_interval_s * NS_PER_SECOND)

    def rollout_phases(self) -> list[RolloutPhase]:
        return [phase.rollout_phase() for phase in self.phases]

    def enabled_metrics(self) -> dict[str, MetricSpec]:
        return {name: spec for name, spec in self.metrics.items() if spec.enabled}

    def blackout_at(self, ts_ns: int) -> Blackout | None:
        return next((window for window in self.blackouts if window.contains(ts_ns)), None)


def parse_plan(data: bytes, fmt: Literal["toml", "json"] = "toml") -> Plan:
    """Return the plan in `data`; raise ValueError saying what is wrong."""
    try:
        if fmt == "toml":
            return msgspec.toml.decode(data, type=Plan)
        return msgspec.json.decode(data, type=Plan)
    except msgspec.ValidationError as error:
        raise ValueError(f"invalid rollout plan: {error}") from error
    except msgspec.DecodeError as error:
        raise ValueError(f"rollout plan is not valid {fmt.upper()}: {error}") from error


def plan_digest(data: bytes) -> str:
    """Return a short digest of a plan file, recorded in the rollout so a changed file is noticed."""
    return hashlib.sha256(data).hexdigest()[:16]


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * NS_PER_SECOND + moment.microsecond * 1_000
