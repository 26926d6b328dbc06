"""The whole stack as processes: fills, risk snapshots, the halt contract, a restart with nothing lost or doubled,
and every service's spans at an OTLP receiver.

Replays the first half of 2008 (bundled S&P 500 data) in lockstep through collector → execution → risk,
with a strategy that trades on every bar.
"""

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import msgspec
import nats
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from qmp_core import bus, subjects
from qmp_core.datasets import load_sp500_index
from qmp_core.messages import Fill, PortfolioSnapshot
from qmp_ops.replay import RunObserver
from qmp_ops.runtime.supervisor import SERVICES, Stack, StackOptions
from qmp_venues.fake_venue import LoopbackServer

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
START, END = "2008-01-01", "2008-06-30"
WAIT_S = 60.0


async def wait_for(predicate, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def read_all(nc: nats.NATS, stream: str, subject: str) -> list[bytes]:
    return [message.data async for message in bus.read_stream(nc, stream, subject)]


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on loopback: what each service exported, as (service, trace id, span)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        self._server = LoopbackServer()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        return await self._server.serve(app)

    async def stop(self) -> None:
        await self._server.stop()

    async def _export(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            names = [a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"]
            for scope in resource_spans.scope_spans:
                self.spans += [(names[0] if names else "", span.trace_id.hex(), span.name) for span in scope.spans]
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


@pytest.fixture
def stack(tmp_path: Path):
    strategy = "sys" + uuid.uuid4().hex[:8]
    options = StackOptions(
        home=tmp_path / ".qmp",
        clock="replay",
        service_env={
            "collector": {"QMP_SOURCE": "history", "QMP_VENUE": strategy + "v", "QMP_START": START, "QMP_END": END,
                          "QMP_REPLAY_RATE": "12", "QMP_LOCKSTEP_STRATEGY": strategy},
            "execution": {"QMP_STRATEGIES": f"{strategy}=qmp_test_strategies:DailyRebalancer",
                          "PYTHONPATH": str(ROOT / "tests" / "support")},
        },
    )
    stack = Stack(options)
    stack.strategy = strategy  # type: ignore[attr-defined]
    stack.start_servers()
    try:
        yield stack
    finally:
        stack.stop()


async def test_stack_when_halted_restarted_and_resumed_then_contract_holds_and_nothing_lost_or_doubled(stack):
    strategy = stack.strategy
    days = len(load_sp500_index(START, END))
    nc = await stack.connection.connect()
    observer = RunObserver(strategy)
    await observer.start(nc)
    decisions: list[tuple[float, dict]] = []

    async def on_decision(msg):
        decisions.append((time.monotonic(), json.loads(msg.data)))

    await nc.subscribe(subjects.orders(strategy), cb=on_decision, pending_msgs_limit=-1)
    receiver = OtlpReceiver()
    endpoint = await receiver.start()
    for service in SERVICES:  # every service sends its spans to the receiver (QMP_OTLP_ENDPOINT)
        stack.options.service_env.setdefault(service, {})["QMP_OTLP_ENDPOINT"] = endpoint
    await stack.start_services()

    # 1. Trading flows: fills and risk snapshots.
    await wait_for(lambda: observer.fills >= 10 and len(observer.snapshots) >= 5, "fills and snapshots")

    # 2. The README's example client halts, sees a denial with its reason, resumes.
    example = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(ROOT / "examples" / "halt_and_resume.py"), strategy,
                         str(stack.options.home / "connection.json")],
        capture_output=True, text=True, timeout=90,
    )
    assert example.returncode == 0, example.stderr
    assert '"accepted":true' in example.stdout.replace(" ", "")
    assert "decision -> OrderDenied HALTED" in example.stdout

    # 3. A halt by plain JSON request; from the first denial on, every decision is a denial.
    # Decisions are told apart by their reason, not by when the test read them: under load the subscription
    # may still be reading the example's decisions (its halt said "test" too) after this halt is applied.
    reply = json.loads((await nc.request(subjects.control(strategy), b'{"command":"halt","reason":"step 3"}',
                                         timeout=5)).data)
    assert reply["accepted"] is True and reply["state"]["status"] == "HALTED"

    def first_denial() -> int | None:  # a pre-trade check may deny an order in flight: the halt's say HALTED
        return next((i for i, (_, d) in enumerate(decisions)
                     if d.get("reason_code") == "HALTED" and "step 3" in d.get("reason", "")), None)

    await wait_for(lambda: first_denial() is not None, "a denial for the halt")

    # 4. Kill execution mid-replay and start it again: the halt survives, the book is recovered.
    stack.stop_service("execution", signal.SIGKILL)
    restarted_at = time.monotonic()
    stack.start_service("execution")
    await stack.wait_healthy("execution")
    await wait_for(lambda: sum(t > restarted_at for t, _ in decisions) >= 5, "decisions after the restart")
    halted_from = first_denial()
    after_restart = [d for i, (t, d) in enumerate(decisions) if t > restarted_at and i > halted_from]
    assert all(d["event"] == "OrderDenied" and d["reason_code"] == "HALTED" for d in after_restart)

    # 5. Resume lets orders through again.
    resume_sent_at = time.monotonic()
    reply = json.loads((await nc.request(subjects.control(strategy), b'{"command":"resume","mode":"normal"}',
                                         timeout=5)).data)
    assert reply["accepted"] is True and reply["state"]["status"] == "ACTIVE"
    await wait_for(lambda: any(t > resume_sent_at and d["event"] == "OrderAccepted" for t, d in decisions),
                   "an accepted order after resume")
    # In publish order, from the halt's first denial on, no order is accepted before the resume was sent.
    assert not any(d["event"] == "OrderAccepted" and t < resume_sent_at
                   for t, d in decisions[halted_from:])

    # 6. The replay completes: one portfolio and one risk snapshot per trading day, none doubled.
    await wait_for(lambda: len({s["ts_event"] for s in observer.snapshots}) >= days, "the end of the replay",
                   timeout_s=180)
    js = nc.jetstream()
    portfolios = [msgspec.json.decode(m, type=PortfolioSnapshot)
                  for m in await read_all(nc, subjects.STREAM_EXEC, subjects.portfolio(strategy))]
    assert len(portfolios) == days
    assert len({p.ts_event for p in portfolios}) == days
    risk_count = (await js.stream_info(subjects.STREAM_RISK, subjects_filter=subjects.snapshot(strategy))
                  ).state.subjects[subjects.snapshot(strategy)]
    assert risk_count == days

    fills = [msgspec.json.decode(m, type=Fill) for m in await read_all(nc, subjects.STREAM_EXEC,
                                                                        subjects.fills(strategy))]
    assert len({f.fill_id for f in fills}) == len(fills) > 0
    connection = await asyncpg.connect(stack.database_url)
    stored = 0
    try:  # the last batch's rows follow its snapshot by a moment (written off the critical path)
        deadline = time.monotonic() + 10.0
        while stored < len(fills) and time.monotonic() < deadline:
            stored = await connection.fetchval("SELECT count(*) FROM fills WHERE strategy = $1", strategy)
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    assert stored == len(fills)

    # Cash moves only by fills: every fill counted once across the restart.
    by_ts: dict[int, float] = {}
    for fill in fills:
        sign = 1.0 if fill.side == "BUY" else -1.0
        by_ts[fill.ts_event] = by_ts.get(fill.ts_event, 0.0) - sign * fill.quantity * fill.price - fill.fee
    for previous, current in itertools.pairwise(portfolios):
        expected_cash = previous.cash + by_ts.get(current.ts_event, 0.0)
        assert current.cash == pytest.approx(expected_cash, rel=1e-9, abs=1e-6), current.ts_event

    assert stack.dead_services() == []

    # 7. Every service's spans reached the OTLP receiver, and one batch is one trace across the data services.
    await wait_for(lambda: {f"qmp-{s}" for s in SERVICES} <= {service for service, _, _ in receiver.spans},
                   "spans of every service at the OTLP receiver", timeout_s=30)
    by_trace: dict[str, set[str]] = {}
    for service, trace_id, _ in receiver.spans:
        by_trace.setdefault(trace_id, set()).add(service)
    assert any({"qmp-collector", "qmp-execution", "qmp-risk"} <= services for services in by_trace.values())
    await receiver.stop()
    await nc.close()
