"""A drawdown breaker halts a strategy mid-replay: its trace runs from the market data to the denied orders,
`qmp incident` reconstructs the chain with its timings, and its page renders in headless Chromium.

The stack replays autumn 2008 through an equal-weight strategy with risk's drawdown breaker at 3% over 24 h
(the equal-weight book first loses more than that in a day on 2008-09-09); the halt is latched, so every
order after it is denied.
"""

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from qmp_ops import traces
from qmp_ops.runtime.supervisor import Stack, StackOptions
from qmp_ops.testing import chromium

pytestmark = pytest.mark.system

SUPPORT = Path(__file__).resolve().parents[1] / "support"
QMP = [sys.executable, "-m", "qmp_ops.cli.main"]
DRAWDOWN_HALT = 0.03
BREAKER_RED = (0xD6, 0x27, 0x28)  # the timeline's colour for breaker events (qmp_ops.incident.report.COLORS)


@pytest.fixture
def stack(tmp_path: Path):
    strategy = "in" + uuid.uuid4().hex[:8]
    options = StackOptions(
        home=tmp_path / ".qmp",
        clock="replay",
        service_env={
            "collector": {"QMP_SOURCE": "history", "QMP_VENUE": strategy + "v", "QMP_START": "2008-08-01",
                          "QMP_END": "2008-10-31", "QMP_REPLAY_RATE": "0", "QMP_LOCKSTEP_STRATEGY": strategy},
            # as the demo replays: a batch's orders and fills in one message, which `qmp incident` reads too
            "execution": {"QMP_STRATEGIES": f"{strategy}=qmp_rollout_strategies:EqualWeight",
                          "PYTHONPATH": str(SUPPORT), "QMP_ORDER_EVENTS": "per_batch"},
            "risk": {"QMP_DRAWDOWN_HALT": str(DRAWDOWN_HALT), "QMP_VOL_RATIO_LIMIT": "1000",
                     "QMP_VOL_RATIO_RELEASE": "999"},
            "deployer": {"QMP_MEMORY_PROBE": "off"},
        },
    )
    stack = Stack(options)
    stack.strategy = strategy  # type: ignore[attr-defined]
    stack.start_servers()
    try:
        yield stack
    finally:
        stack.stop()


def halt_trace(traces_dir: Path, strategy: str) -> list[traces.Span]:
    """Every span of the trace holding the drawdown breaker's command (none yet: [])."""
    found, _ = traces.find(traces_dir, "drawdown_24h", limit=5) if traces_dir.is_dir() else ([], 0)
    for roots in found:
        spans, pending = [], list(roots)
        while pending:
            span = pending.pop()
            spans.append(span)
            pending.extend(span.children)
        if any(s.attributes.get("qmp.strategy") == strategy and s.name == "risk.control" for s in spans):
            return spans
    return []


async def test_incident_when_the_drawdown_breaker_halts_then_one_trace_holds_the_chain_and_the_report_renders(
    stack, tmp_path: Path,
) -> None:
    executable = chromium()
    strategy = stack.strategy
    for service in ("deployer", "risk", "execution", "collector"):
        stack.start_service(service)
        await stack.wait_healthy(service)

    # 1. One trace: the collector's publish → risk's breaker command → the deployer's halt → denied orders.
    traces_dir = stack.run_dir / "traces"
    deadline = time.monotonic() + 240
    spans: list[traces.Span] = []
    chain = {"collector", "risk", "deployer", "execution"}
    # Each service exports its spans in its own batches: wait for the whole chain, not just its last link.
    while not (any(s.name == "execution.denied" for s in spans) and {s.service for s in spans} >= chain):
        assert time.monotonic() < deadline, "no trace from the drawdown breaker to a denied order"
        assert stack.dead_services() == [], stack.log_tail(stack.dead_services()[0])
        await asyncio.sleep(1.0)
        spans = halt_trace(traces_dir, strategy)
    by_name = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        by_name.setdefault(span.name, span)
    assert {s.service for s in spans} >= chain
    publish, breaker = by_name["collector.publish_batch"], by_name["risk.control"]
    applied, denied = by_name["deployer.control"], by_name["execution.denied"]
    assert breaker.attributes["qmp.breaker"] == "drawdown_24h"
    command_id = breaker.attributes["qmp.command_id"]
    assert applied.attributes["qmp.command_id"] == command_id and applied.attributes["qmp.accepted"] is True
    assert denied.attributes["qmp.command_id"] == command_id
    assert denied.attributes["qmp.reason_code"] == "HALTED" and denied.attributes["qmp.strategy"] == strategy
    assert publish.start_ns <= breaker.start_ns <= applied.start_ns <= denied.start_ns

    # 2. `qmp incident` finds that halt (the latest) and reports the chain with its timings.
    await asyncio.sleep(3.0)  # a few more bars: denials and fills after the halt
    out = tmp_path / "incident"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QMP_")} | {"COLUMNS": "200"}
    run = await asyncio.to_thread(
        subprocess.run, [*QMP, "incident", "--strategy", strategy, "--out", str(out), "--json"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["trigger"]["command_id"] == command_id
    assert report["trace_id"] == breaker.trace_id
    timings = report["timings_ms"]
    assert set(timings) == {"market data → breaker's command", "breaker's command → halt applied",
                            "breaker's command → first denied order", "market data → first denied order"}
    assert 0 < timings["breaker's command → halt applied"] < timings["breaker's command → first denied order"]
    assert report["event_timings_s"]["breaker tripped → halt applied"] == 0.0
    assert report["event_timings_s"]["trigger → first denied order"] > 0  # the next bar, in event time
    kinds = {event["kind"] for event in report["events"]}
    assert {"breaker", "command", "denied", "fill"} <= kinds
    trip = next(e for e in report["events"] if e["kind"] == "breaker" and e["action"] == "halt")
    assert trip["trace_id"] == breaker.trace_id and trip["ts_event"] == report["trigger"]["ts_event"]
    first_denied = next(e for e in report["events"] if e["kind"] == "denied")
    assert first_denied["trace_id"] == breaker.trace_id
    assert {s["service"] for s in report["steps"]} >= {"collector", "risk", "deployer", "execution"}

    # 3. The page renders in headless Chromium: its timeline shows, with the breaker's mark on it.
    from PIL import Image
    from playwright.async_api import async_playwright

    page_path = out / "incident.html"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(page_path.as_uri())
            assert strategy in await page.title()
            for section in ("timings", "timeline", "waterfall", "series", "events"):
                assert await page.locator(f"#{section}").is_visible(), section
            assert await page.locator("#timings td").first.inner_text() == "market data → breaker's command"
            timeline = page.locator("#timeline svg")
            box = await timeline.bounding_box()
            assert box is not None and box["width"] > 400 and box["height"] > 100
            shot = await timeline.screenshot(path=str(tmp_path / "timeline.png"))
            await page.screenshot(path=str(tmp_path / "incident.png"), full_page=True)
        finally:
            await browser.close()
    pixels = Image.open(io.BytesIO(shot)).convert("RGB")
    colours = {colour for _, colour in pixels.getcolors(maxcolors=1 << 20) or []}
    assert any(sum(abs(a - b) for a, b in zip(colour, BREAKER_RED, strict=True)) < 40 for colour in colours), \
        "no breaker mark drawn on the timeline"
