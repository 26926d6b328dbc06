"""Metrics: served over HTTP in Prometheus' text format, health read at scrape time, messages counted."""

import asyncio
import socket
import urllib.request

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from qmp_core import metrics
from qmp_core.clock import TestClock
from qmp_core.config import ServiceSettings
from qmp_core.service import Durable, Liveness, start_metrics


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_start_metrics_when_port_set_then_health_status_is_scraped_as_it_is_at_that_moment() -> None:
    liveness = Liveness()
    port = start_metrics(ServiceSettings(metrics_port=0), "svc-scrape", liveness)
    assert port is None  # 0: nothing served, health still tracked
    bound = metrics.serve(0)

    before = scrape(bound)
    liveness.ready()
    liveness.retry("database", ConnectionError("down"))
    after = scrape(bound)

    def status(samples: dict) -> dict[str, float]:
        return {name: samples[("qmp_service_status", (("service", "svc-scrape"), ("status", name)))]
                for name in metrics.STATUSES}

    assert status(before) == {"starting": 1.0, "ok": 0.0, "degraded": 0.0, "failing": 0.0}
    assert status(after) == {"starting": 0.0, "ok": 0.0, "degraded": 1.0, "failing": 0.0}
    assert after[("qmp_service_uptime_seconds", (("service", "svc-scrape"),))] >= 0.0


class _Raw:
    subject = "qmp.md.x.bars"
    reply = ""
    data = b""
    metadata = None


class _Message:
    raw_message = _Raw()


def test_start_metrics_when_the_port_is_taken_then_no_endpoint_and_the_service_goes_on(caplog) -> None:
    with socket.socket() as taken:  # another process holds the port the supervisor gave this service
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        served = start_metrics(ServiceSettings(metrics_port=port), "svc-taken", Liveness())

    assert served is None
    assert any("metrics not served" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


async def test_durable_when_message_handled_after_a_retry_then_counted_timed_and_retry_counted() -> None:
    liveness = Liveness()
    durable = Durable("svc-durable", TestClock(1), liveness, lambda: None,  # type: ignore[arg-type,return-value]
                      sleep=lambda _s: asyncio.sleep(0))
    calls = 0

    async def handle() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database down")  # transient: retried in place

    labels = {"service": "svc-durable", "what": "bars"}
    await durable.handle(_Message(), handle, "bars")  # type: ignore[arg-type]

    assert REGISTRY.get_sample_value("qmp_messages_handled_total", labels) == 1.0
    assert REGISTRY.get_sample_value("qmp_message_handling_seconds_count", labels) == 1.0
    assert REGISTRY.get_sample_value("qmp_dependency_retries_total", labels) == 1.0


def test_observe_breakers_when_a_breaker_is_released_then_its_state_drops_to_zero_and_others_stay() -> None:
    def state(breaker: str) -> float | None:
        return REGISTRY.get_sample_value("qmp_breaker_state", {"strategy": "brk-test", "breaker": breaker})

    metrics.observe_breakers("brk-test", ["drawdown_24h", "stop_loss:AAA"])
    assert (state("drawdown_24h"), state("stop_loss:AAA")) == (1.0, 1.0)
    metrics.observe_breakers("brk-test", ["drawdown_24h"])
    assert (state("drawdown_24h"), state("stop_loss:AAA")) == (1.0, 0.0)


def test_subject_kind_when_strategies_or_venues_differ_then_one_label_value_per_kind_of_message() -> None:
    assert metrics.subject_kind("qmp.exec.mom.orders") == metrics.subject_kind("qmp.exec.mom-2.orders") == "exec.orders"
    assert metrics.subject_kind("qmp.md.binance.bars") == "md.bars"
    assert metrics.subject_kind("qmp.dlq") == "qmp.dlq"  # too short to have a middle token: kept whole
