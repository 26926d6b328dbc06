"""Prometheus metrics: what every service counts, and the HTTP endpoint a Prometheus server scrapes.

One registry per process (prometheus-client's default), so several services run in one process (the tests)
share each metric, told apart by the `service` label. Every service exports:
- `qmp_messages_handled_total` and `qmp_message_handling_seconds` (its durable consumers: what, how long),
- `qmp_dead_letters_total` (input it could not use, by service),
- `qmp_dependency_retries_total` (a database or the bus down, retried),
- `qmp_service_status` (1 for the status health reports: starting, ok, degraded, failing) and
  `qmp_service_uptime_seconds`, read from its health when scraped.
- `qmp_messages_published_total` (by kind of subject) and `qmp_consumer_pending_messages` (each durable
  consumer's lag, read off the message it just handled),
- `process_resident_memory_bytes` and the rest of prometheus-client's process metrics.
Each service adds its own beside (`qmp_risk_*`, `qmp_breaker_*`, `qmp_batch_to_snapshot_seconds`,
`qmp_orders_total`, `qmp_allocation`, `qmp_trading_status`, `qmp_rollout_phase`, `qmp_halt_to_denial_seconds`,
`qmp_slippage_bps`, `qmp_venue_request_seconds`, `qmp_control_*`, `qmp_bars_*`).
`QMP_METRICS_PORT` turns the endpoint on (`serve`); `qmp up` gives each service a port.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Handling a message: from under a millisecond (a bar batch in risk) to the seconds a replay batch can take.
HANDLING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
STATUSES = ("starting", "ok", "degraded", "failing")

MESSAGES_HANDLED = Counter("qmp_messages_handled_total", "Messages a durable consumer handled", ["service", "what"])
MESSAGE_HANDLING = Histogram("qmp_message_handling_seconds", "Time to handle one message, retries included",
                             ["service", "what"], buckets=HANDLING_BUCKETS)
DEAD_LETTERS = Counter("qmp_dead_letters_total", "Input dead-lettered with its reason on qmp.dlq.<service>",
                       ["service"])
RETRIES = Counter("qmp_dependency_retries_total", "Tries that failed because a dependency was down",
                  ["service", "what"])
MESSAGES_PUBLISHED = Counter("qmp_messages_published_total", "Messages published to a stream, by kind of subject "
                             "(its second and last tokens: exec.orders, md.bars, risk.snapshot, ...)", ["kind"])
CONSUMER_PENDING = Gauge("qmp_consumer_pending_messages", "Messages waiting behind the one a durable consumer "
                         "just handled: its lag", ["service", "what"])

# Risk: the latest snapshot of each strategy.
RISK_VAR = Gauge("qmp_risk_var", "Value at Risk, a loss fraction of equity", ["strategy", "measure"])
RISK_ES = Gauge("qmp_risk_es", "Expected Shortfall, a loss fraction of equity", ["strategy", "measure"])
RISK_DRAWDOWN = Gauge("qmp_risk_drawdown", "Drawdown from the peak, a fraction", ["strategy", "window"])
RISK_EQUITY = Gauge("qmp_risk_equity", "Equity risk last valued", ["strategy"])
BREAKER_TRIPS = Counter("qmp_breaker_trips_total", "Circuit breakers tripped", ["strategy", "breaker"])
BREAKER_STATE = Gauge("qmp_breaker_state", "1 while a breaker is in force, 0 once released", ["strategy", "breaker"])
RISK_VOLATILITY_RATIO = Gauge("qmp_risk_volatility_ratio", "Realized volatility over its average", ["strategy"])
BATCH_TO_SNAPSHOT = Histogram("qmp_batch_to_snapshot_seconds", "From a bar batch stored on the stream to risk's "
                              "snapshot of the portfolio that traded it (wall clock)", ["strategy"],
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))

# Execution.
ORDERS = Counter("qmp_orders_total", "Order decisions", ["strategy", "decision", "reason_code"])
FILLS = Counter("qmp_fills_total", "Fills booked", ["strategy"])
EQUITY = Gauge("qmp_equity", "Equity of the strategy's book after its last batch", ["strategy"])
GROSS_EXPOSURE = Gauge("qmp_gross_exposure", "Sum of |quantity x price| of the strategy's positions after its last "
                       "batch", ["strategy"])
ALLOCATION = Gauge("qmp_allocation", "Share of the capital the strategy trades with here (0: it trades elsewhere)",
                   ["strategy"])
SIZE_MULTIPLIER = Gauge("qmp_size_multiplier", "The trading state's order-size multiplier", ["strategy"])
TRADING_STATUS = Gauge("qmp_trading_status", "1 for the strategy's trading state (ACTIVE, REDUCING, HALTED)",
                       ["strategy", "status"])
ROLLOUT_PHASE = Gauge("qmp_rollout_phase", "1 for the phase the strategy's rollout is in, by environment",
                      ["strategy", "phase", "env"])
HALT_TO_DENIAL = Histogram("qmp_halt_to_denial_seconds", "From a halt written to the control bucket to the first "
                           "order execution denied under it (wall clock)", ["strategy"],
                           buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 60.0))
SLIPPAGE_BPS = Histogram("qmp_slippage_bps", "Each fill's price against its arrival price, basis points (cost > 0)",
                         ["strategy"], buckets=(-20, -5, -1, 0, 1, 2, 5, 10, 20, 50, 100))
VENUE_REQUEST = Histogram("qmp_venue_request_seconds", "A call to the venue's API, by endpoint and outcome",
                          ["venue", "endpoint", "outcome"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))

# Deployer.
CONTROL_REQUESTS = Counter("qmp_control_requests_total", "Control requests answered (accepted or refused)",
                           ["lane", "outcome"])
CONTROL_REPLY = Histogram("qmp_control_reply_seconds", "From a control request's arrival to its reply",
                          ["lane"], buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))

ALERTS = Counter("qmp_alerts_total", "Alerts to people (QMP_ALERT_URLS), by level and outcome", ["level", "outcome"])

# Collector.
BARS_PUBLISHED = Counter("qmp_bars_published_total", "Bar batches published on qmp.md.<venue>.bars", ["venue"])
BAR_ROWS_REJECTED = Counter("qmp_bar_rows_rejected_total", "Bar rows refused (invalid or held)", ["venue"])


class _Health(Collector):
    """Reads each tracked service's health when Prometheus scrapes: no cost between scrapes."""

    def __init__(self) -> None:
        self._services: dict[str, tuple[Callable[[], str], float]] = {}
        self._lock = threading.Lock()

    def track(self, service: str, status: Callable[[], str], started_s: float) -> None:
        with self._lock:
            self._services[service] = (status, started_s)

    def describe(self) -> list[Any]:
        return []  # names are fixed here; nothing to check against other collectors

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = GaugeMetricFamily("qmp_service_status", "1 for the status the service's health reports",
                                   labels=["service", "status"])
        uptime = GaugeMetricFamily("qmp_service_uptime_seconds", "Seconds since the service started",
                                   labels=["service"])
        with self._lock:
            services = dict(self._services)
        now = time.time()
        for service, (current, started) in sorted(services.items()):
            try:
                value = current()
            except Exception:  # a scrape must never fail on one service's health
                value = "failing"
            for name in STATUSES:
                status.add_metric([service, name], 1.0 if name == value else 0.0)
            uptime.add_metric([service], now - started)
        yield status
        yield uptime


_HEALTH = _Health()
REGISTRY.register(_HEALTH)
_served: dict[int, int] = {}  # port asked for → port bound (one endpoint per process)


def track(service: str, status: Callable[[], str], started_s: float) -> None:
    """Export the service's health status (`Liveness.status`) as `qmp_service_status`, and its uptime from
    `started_s` (epoch seconds: `Liveness.started_ns`, which its health reports too)."""
    _HEALTH.track(service, status, started_s)


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics on host:port (0 picks a free port) once per process; return the port bound."""
    if port in _served:
        return _served[port]
    server, _ = start_http_server(port, addr=host)
    bound = int(server.server_address[1])
    _served[port] = bound
    log.info("metrics served", extra={"url": f"http://{host}:{bound}/metrics"})
    return bound


def subject_kind(subject: str) -> str:
    """A subject's kind for a label: its second and last tokens (`qmp.exec.mom.orders` → `exec.orders`), so a
    label's values are as few as the kinds of message, whatever the strategies and venues."""
    parts = subject.split(".")
    return f"{parts[1]}.{parts[-1]}" if len(parts) > 2 else subject


_breakers_in_force: dict[str, set[str]] = {}


def observe_breakers(strategy: str, in_force: list[str]) -> None:
    """Set `qmp_breaker_state`: 1 for the breakers a snapshot lists, 0 for the ones it no longer does."""
    now, before = set(in_force), _breakers_in_force.get(strategy, set())
    for breaker in now:
        BREAKER_STATE.labels(strategy, breaker).set(1.0)
    for breaker in before - now:
        BREAKER_STATE.labels(strategy, breaker).set(0.0)
    _breakers_in_force[strategy] = now


def observe_snapshot(strategy: str, var: dict[str, float], es: dict[str, float], drawdown: float,
                     drawdown_24h: float, drawdown_max: float, equity: float) -> None:
    """Set risk's gauges from a RiskSnapshot's fields."""
    for measure, value in var.items():
        RISK_VAR.labels(strategy, measure).set(value)
    for measure, value in es.items():
        RISK_ES.labels(strategy, measure).set(value)
    for window, value in (("current", drawdown), ("24h", drawdown_24h), ("max", drawdown_max)):
        RISK_DRAWDOWN.labels(strategy, window).set(value)
    RISK_EQUITY.labels(strategy).set(equity)
