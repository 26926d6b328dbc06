"""Which events reach a person, and how often: a pure rule over breaker events, trading states and the
rollouts' audit trail.

Alerted:
- a breaker that trips (critical when it halts, else warning);
- a strategy that becomes HALTED (critical), and one that trades again after a halt (info);
- a gate of the monitoring table (drawdown, VaR, slippage, API latency, memory, ...) that crosses its
  warning or critical level (warning, critical; a gate without a fresh reading, warning), and one that
  clears (info);
- a rollout rolled back, aborted or halted (critical) or held by a gate's warning (warning);
- a failed verification (critical).
One alert per key (strategy and what happened) per `quiet_s`: the ones in between are counted and the next
alert of that key says how many were held back, so a flapping breaker cannot flood a channel.
"""

from dataclasses import dataclass, field

from qmp_core.messages import AlertLevel, BreakerEvent, DeploymentEvent, TradingState

ROLLOUT_FAILURES = {"rolled_back", "aborted", "halted"}
ROLLOUT_WARNINGS = {"held"}
GATE_PREFIX = "gate "


@dataclass(frozen=True)
class Alert:
    key: str
    title: str
    body: str
    level: AlertLevel
    strategy: str = ""
    held_back: int = 0


@dataclass
class AlertRules:
    quiet_s: float = 300.0
    _last_sent: dict[str, float] = field(default_factory=dict)
    _held_back: dict[str, int] = field(default_factory=dict)
    _status: dict[str, str] = field(default_factory=dict)  # strategy -> last effective status seen
    suppressed: int = 0

    def on_breaker(self, event: BreakerEvent, now_s: float) -> Alert | None:
        if type(event).__name__ != "BreakerTripped":
            return None
        level: AlertLevel = "critical" if event.action == "halt" else "warning"
        detail = f" ({event.detail})" if getattr(event, "detail", "") else ""
        return self._emit(f"{event.strategy}:breaker:{event.breaker}", now_s, Alert(
            key="", strategy=event.strategy, level=level,
            title=f"QMP {event.strategy}: breaker {event.breaker} tripped, action {event.action}",
            body=f"{event.breaker} = {event.value:.4g} against the threshold {event.threshold:.4g}{detail}; "
                 f"event time {event.ts_event}"))

    def on_state(self, state: TradingState, now_s: float) -> Alert | None:
        before = self._status.get(state.strategy)
        self._status[state.strategy] = state.status
        who = state.issued_by or state.updated_by or "?"
        if state.status == "HALTED" and before != "HALTED":
            return self._emit(f"{state.strategy}:halted", now_s, Alert(
                key="", strategy=state.strategy, level="critical", title=f"QMP {state.strategy}: HALTED by {who}",
                body=f"no new orders until an explicit resume; reason: {state.reason or 'none given'}"))
        if before == "HALTED" and state.status != "HALTED":
            return self._emit(f"{state.strategy}:resumed", now_s, Alert(
                key="", strategy=state.strategy, level="info",
                title=f"QMP {state.strategy}: {state.status} again ({who})",
                body=f"size multiplier {state.size_multiplier:g}, allocation {state.allocation:g}"
                     + (", safe mode" if state.safe_mode else "")))
        return None

    def on_deployment(self, event: DeploymentEvent, now_s: float) -> Alert | None:
        if event.kind in ("alert", "gate_cleared") and event.trigger.startswith(GATE_PREFIX):
            return self._on_gate(event, now_s)
        if event.kind == "alert":  # not a gate: a failed verification (`qmp verify`), or another tool's alarm
            return self._emit(f"{event.strategy}:alert:{event.issued_by}", now_s, Alert(
                key="", strategy=event.strategy, level="critical",
                title=f"QMP {event.strategy}: alert from {event.issued_by or event.actor}",
                body=event.reason or event.trigger or "no reason given"))
        level: AlertLevel
        if event.kind in ROLLOUT_FAILURES:
            level = "critical"
        elif event.kind in ROLLOUT_WARNINGS:
            level = "warning"
        else:
            return None
        return self._emit(f"{event.strategy}:rollout:{event.kind}", now_s, Alert(
            key="", strategy=event.strategy, level=level,
            title=f"QMP {event.strategy}: rollout {event.kind.replace('_', ' ')}",
            body=f"{event.phase_from} → {event.phase_to}, allocation {event.allocation_before:g} → "
                 f"{event.allocation_after:g}; {event.reason or event.trigger or 'no reason given'} "
                 f"(by {event.issued_by or event.actor})"))

    def _on_gate(self, event: DeploymentEvent, now_s: float) -> Alert | None:
        """A gate's level changed (the trigger is `gate <metric> <level>`): crossed up, or cleared."""
        _, metric, gate_level = [*event.trigger.split(" ", 2), "", ""][:3]
        level: AlertLevel = ("info" if event.kind == "gate_cleared" else
                             "critical" if gate_level == "critical" else "warning")
        what = "cleared" if level == "info" else gate_level or "breached"
        warning, critical = (event.thresholds.get(metric) or [None, None])[:2]
        value = event.metrics.get(metric)
        levels = f" (warning {warning:g}, critical {critical:g})" if warning is not None and critical is not None \
            else ""
        return self._emit(f"{event.strategy}:gate:{metric}:{what}", now_s, Alert(
            key="", strategy=event.strategy, level=level,
            title=f"QMP {event.strategy}: {metric} {what}",
            body=f"{metric} = {'no value' if value is None else f'{value:.4g}'}{levels} in phase {event.phase_to}; "
                 f"{event.reason}"))

    def _emit(self, key: str, now_s: float, alert: Alert) -> Alert | None:
        last = self._last_sent.get(key)
        if last is not None and now_s - last < self.quiet_s:
            self._held_back[key] = self._held_back.get(key, 0) + 1
            self.suppressed += 1
            return None
        self._last_sent[key] = now_s
        held = self._held_back.pop(key, 0)
        body = alert.body + (f" ({held} more like it held back in the last {self.quiet_s:g} s)" if held else "")
        return Alert(key=key, title=alert.title, body=body, level=alert.level, strategy=alert.strategy,
                     held_back=held)
