"""The dashboard in headless Chromium (Debian's, through Playwright) against a running stack: sign-in required,
the overview shows the demo's strategy and another live, a halt pressed in the page reaches execution (orders denied on
the bus) and every open page shows HALTED within a second, a resume brings it back; screenshots of each page.

Replays 2008 (bundled S&P 500 data) slowly through the whole stack, so the strategy trades while the test
presses its buttons, signed in as a named operator (alice): the audit trail names her.
"""

import asyncio
import json
import time
import uuid
from pathlib import Path

import aiohttp
import nats
import pytest
from aiohttp import web

from qmp_core import bus, subjects
from qmp_lab.verify.core import TestResult
from qmp_lab.verify.gate import record_verification
from qmp_lab.verify.report import pyplot, write_report
from qmp_ops.cli.demo import DEMO_STRATEGY, DEMO_STRATEGY_PATH
from qmp_ops.cli.deploy import send_deploy_command
from qmp_ops.dashboard import create_app
from qmp_ops.runtime.ports import free_port
from qmp_ops.runtime.supervisor import Stack, StackOptions
from qmp_ops.testing import chromium

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
START, END = "2008-01-01", "2008-12-31"
LIVE_BOUND_S = 1.0  # the bound: a change on the bus on screen within a second


@pytest.fixture
def stack(tmp_path: Path):
    strategy = "dash" + uuid.uuid4().hex[:6]
    stack = Stack(StackOptions(home=tmp_path / ".qmp", clock="replay", operators=("alice",), service_env={
        "collector": {"QMP_SOURCE": "history", "QMP_VENUE": strategy + "v", "QMP_START": START, "QMP_END": END,
                      "QMP_REPLAY_RATE": "6", "QMP_LOCKSTEP_STRATEGY": strategy},
        # The demo's strategy beside one that trades on every bar (the one the test halts).
        "execution": {"QMP_STRATEGIES": f"{DEMO_STRATEGY}={DEMO_STRATEGY_PATH},"
                                        f"{strategy}=qmp_test_strategies:DailyRebalancer",
                      "PYTHONPATH": str(ROOT / "tests" / "support")},
    }))
    stack.strategy = strategy  # type: ignore[attr-defined]
    stack.start_servers()
    try:
        yield stack
    finally:
        stack.stop()


async def serve(stack: Stack) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_app(stack.connection))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def sign_in(browser, url: str, user: str, password: str):
    page = await (await browser.new_context(viewport={"width": 1500, "height": 700})).new_page()
    await page.goto(url + "/")
    assert page.url.endswith("/login")  # no session: the sign-in page
    await page.fill("#user", user)
    await page.fill("#password", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(url + "/")
    return page


def record_verification_with_report(home: Path, strategy: str) -> None:
    """A passing `qmp verify` of the strategy as the gate records it, with its report (Markdown and a chart)."""
    folder = home / "reports" / "verify-test"
    folder.mkdir(parents=True)
    plt = pyplot()
    figure = plt.figure(figsize=(3, 2))
    figure.gca().plot([0, 1, 2], [1, 3, 2])
    figure.savefig(folder / "walk_forward.png")
    plt.close(figure)
    results = [TestResult(name="walk_forward", status="pass", summary="12 folds, all positive",
                          charts=["walk_forward.png"])]
    header = {"strategy": DEMO_STRATEGY_PATH, "strategy_id": strategy, "passed": True, "exit_code": 0,
              "started": "now", "finished": "now"}
    report = write_report(folder, header, results)
    record_verification(home, DEMO_STRATEGY_PATH, {}, strategy, results, report, "0" * 64)


async def test_dashboard_when_halt_pressed_then_execution_denies_every_page_shows_halted_and_resume_restores(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executable = chromium()
    strategy = stack.strategy
    shots = tmp_path / "screenshots"
    shots.mkdir()
    await stack.start_services()
    runner, url = await serve(stack)
    nc = await stack.connection.connect(follow=True)
    decisions: list[tuple[float, dict]] = []

    async def on_decision(msg: nats.aio.msg.Msg) -> None:
        decisions.append((time.monotonic(), json.loads(msg.data)))

    await nc.subscribe(subjects.orders(strategy), cb=on_decision, pending_msgs_limit=-1)
    alice = stack.credentials.users["alice"]

    from playwright.async_api import async_playwright

    try:
        # 1. Nothing without signing in: the API answers 401, a control request too; wrong credentials are refused.
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/api/overview") as response:
                assert response.status == 401
            async with http.post(url + f"/api/control/{strategy}", json={"command": "halt"},
                                 headers={"X-QMP-Request": "1"}) as response:
                assert response.status == 401
            async with http.post(url + "/login", data={"user": "alice", "password": "wrong"},
                                 allow_redirects=False) as response:
                assert response.status == 302 and response.headers["Location"] == "/login?error=refused"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            try:
                login = await (await browser.new_context()).new_page()
                await login.goto(url + "/login?error=refused")
                assert await login.locator("#error").is_visible()
                await login.screenshot(path=str(shots / "login.png"))

                # 2. Signed in, the overview shows the strategy trading, its figures filled in live.
                page = await sign_in(browser, url, "alice", alice)
                watcher = await sign_in(browser, url, "alice", alice)  # a second screen, which presses nothing
                row = page.locator(f'tr[data-strategy="{strategy}"]')
                await row.wait_for(timeout=60_000)
                status = row.locator('[data-role="status"]')
                await page.wait_for_function(
                    f'document.querySelector(\'tr[data-strategy="{strategy}"] td:nth-child(6)\').textContent !== "—"',
                    timeout=60_000)
                # Today's PnL: filled in from the books as they come (each replayed day opens at the day before's).
                await page.wait_for_function(
                    f'document.querySelector(\'tr[data-strategy="{strategy}"] [data-role="day-pnl"]\')'
                    '.textContent !== "—"', timeout=30_000)
                assert await status.inner_text() == "ACTIVE"
                await page.locator(f'tr[data-strategy="{DEMO_STRATEGY}"]').wait_for(timeout=30_000)
                assert "signed in as alice" in await page.locator("#user").inner_text()
                await page.locator("#live.on").wait_for(timeout=10_000)
                await page.locator('[data-service="execution"].ok').wait_for(timeout=15_000)
                await page.screenshot(path=str(shots / "overview.png"), full_page=True)

                # 3. Halt pressed: a reason asked, then a confirmation; the deployer's reply is shown.
                answers = iter(["dashboard test halt", None])

                async def on_dialog(dialog) -> None:
                    answer = next(answers, None)
                    await (dialog.accept(answer) if answer is not None else dialog.accept())

                page.on("dialog", on_dialog)
                pressed = time.monotonic()
                await row.locator('button[data-command="halt"]').click()
                await page.wait_for_function('document.getElementById("reply").textContent.includes("accepted")')
                reply = json.loads(await page.locator("#reply").inner_text())
                assert reply["accepted"] is True and reply["state"]["status"] == "HALTED", reply
                watched = watcher.locator(f'tr[data-strategy="{strategy}"] [data-role="status"]')
                await watched.filter(has_text="HALTED").wait_for(timeout=LIVE_BOUND_S * 1000)
                on_screen_s = time.monotonic() - pressed
                assert await status.inner_text() == "HALTED"
                # Who set it: the person (her NATS user, as the audit recorded), on the page that pressed nothing too.
                set_by = watcher.locator(f'tr[data-strategy="{strategy}"] [data-role="set-by"]')
                await set_by.filter(has_text="alice").wait_for(timeout=5_000)
                assert "dashboard test halt — alice (operator)" in await set_by.inner_text()
                await watcher.screenshot(path=str(shots / "halted.png"), full_page=True)

                # 4. Execution denies the strategy's orders under the halt the page sent.
                deadline = time.monotonic() + 30
                while not any(d.get("reason_code") == "HALTED" and "dashboard test halt" in d.get("reason", "")
                              for t, d in decisions if t > pressed):
                    assert time.monotonic() < deadline, "no order denied under the dashboard's halt"
                    await asyncio.sleep(0.1)

                # 5. Resume brings it back: ACTIVE on every page, orders accepted again.
                page.remove_listener("dialog", on_dialog)
                page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
                resumed = time.monotonic()
                await row.locator('button[data-command="resume"]').click()
                await watched.filter(has_text="ACTIVE").wait_for(timeout=LIVE_BOUND_S * 1000 + 5_000)
                deadline = time.monotonic() + 30
                while not any(d["event"] == "OrderAccepted" for t, d in decisions if t > resumed):
                    assert time.monotonic() < deadline, "no order accepted after the dashboard's resume"
                    await asyncio.sleep(0.1)
                await page.screenshot(path=str(shots / "resumed.png"), full_page=True)

                # 5b. A rollout of the demo's strategy (started as `qmp deploy --skip-verification` would): the page
                # offers its verbs; a pause is applied, a promotion refused for want of a passing verification.
                started_rollout = await send_deploy_command(stack.connection, DEMO_STRATEGY, {
                    "verb": "deploy", "plan": "default", "env": "paper", "auto": False,
                    "reason": "dashboard test [unverified]"})
                assert started_rollout["accepted"] is True, started_rollout
                demo_row = page.locator(f'tr[data-strategy="{DEMO_STRATEGY}"]')
                await demo_row.locator('button[data-verb="pause"]').wait_for(timeout=10_000)
                await page.locator("#reply").evaluate("node => node.textContent = ''")
                await demo_row.locator('button[data-verb="pause"]').click()
                await page.wait_for_function('document.getElementById("reply").textContent.includes("accepted")')
                paused = json.loads(await page.locator("#reply").inner_text())
                assert paused["accepted"] is True and paused["rollout"]["status"] == "PAUSED", paused
                await page.locator("#reply").evaluate("node => node.textContent = ''")
                await demo_row.locator('button[data-verb="promote"]').click()
                await page.wait_for_function('document.getElementById("reply").textContent.includes("accepted")')
                promoted = json.loads(await page.locator("#reply").inner_text())
                assert promoted["accepted"] is False and "verification" in promoted["reason"], promoted

                # 6. The strategy's page: curves drawn, every VaR method, the latest order decisions, the fills,
                # and the audit trail naming alice.
                await row.locator("a").click()
                await page.wait_for_url(url + f"/strategy/{strategy}")
                await page.locator("#methods tbody tr").first.wait_for(timeout=15_000)
                points = await page.locator('#equity polyline[data-series="equity"]').get_attribute("points")
                assert points is not None and len(points.split()) >= 20
                methods = await page.locator("#methods tbody tr td:first-child").all_inner_texts()
                assert "historical_99" in methods and len(methods) >= 7
                # the latest decisions (the replay goes on: the halt's denials may be older than the 50 shown)
                await page.locator("#orders tbody tr").filter(has_text="Order").first.wait_for(timeout=10_000)
                assert await page.locator("#fills tbody tr").count() > 0
                # Each paper fill beside the model's prediction; one filled at its arrival close: no drift, no miss.
                fills = [await r.locator("td").all_inner_texts() for r in await page.locator("#fills tbody tr").all()]
                assert all(cells[7] != "—" for cells in fills), fills
                assert any(cells[6] == cells[7] and cells[8] in ("0", "-0") for cells in fills), fills
                # The VaR chart by any method, each exception the page loaded marked as a dot.
                await page.select_option("#measure", "normal_99")
                note = page.locator("#exceptions")
                await page.wait_for_function('document.querySelector("#exceptions").textContent.includes("normal_99")')
                assert await page.locator("#var circle[data-exception]").count() == int(
                    await note.get_attribute("data-count") or -1)
                assert "measure=normal_99" in page.url
                async with aiohttp.ClientSession(cookies={c["name"]: c["value"] for c in await page.context.cookies()}
                                                 ) as http:
                    async with http.get(url + f"/api/strategy/{strategy}?measure=x;drop") as response:
                        assert response.status == 400
                audit = await page.locator("#audit tbody tr").all_inner_texts()
                assert any("halt" in line and "alice" in line for line in audit), audit
                # Never verified here: the deploy gate is closed, saying so.
                assert await page.locator("#gate").get_attribute("data-gate") == "closed"
                assert "no verification" in await page.locator("#gate").inner_text()
                await page.screenshot(path=str(shots / "strategy.png"), full_page=True)

                # 6a. Once verified (with the report `qmp verify` writes): the report one click away, its chart shown.
                assert await page.locator("#report").is_hidden()
                monkeypatch.chdir(tmp_path)  # the gate reads ./.qmp, as every `qmp` command does
                record_verification_with_report(Path(".qmp"), strategy)
                await page.reload()
                await page.locator("#report").wait_for(state="visible", timeout=10_000)
                await page.locator("#report").click()
                await page.wait_for_url(url + f"/verification/{strategy}/")
                assert "QMP verification" in await page.locator("h1").inner_text()
                await page.wait_for_function('document.querySelector("img") && document.querySelector("img").complete')
                assert await page.evaluate('document.querySelector("img").naturalWidth') > 100
                await page.screenshot(path=str(shots / "verification.png"), full_page=True)
                async with aiohttp.ClientSession(cookies={c["name"]: c["value"] for c in await page.context.cookies()}
                                                 ) as http:
                    for name in ("report.json", "..%2F..%2Fconnection.json", "latest.json"):
                        async with http.get(url + f"/verification/{strategy}/{name}") as response:
                            assert response.status == 404, name
                async with aiohttp.ClientSession() as http:  # nothing without a session
                    async with http.get(url + f"/verification/{strategy}/walk_forward.png") as response:
                        assert response.status == 401

                # 6c. The demo strategy's rollout: its timeline (deployed, then paused from this page) and its gates
                # now, each against its warning and critical levels, as the rollout state holds them.
                await page.goto(url + f"/strategy/{DEMO_STRATEGY}")
                await page.locator("#rollout tbody tr").filter(has_text="paused").first.wait_for(timeout=10_000)
                kinds = await page.locator("#rollout tbody tr td:nth-child(2)").all_inner_texts()
                assert kinds[:2] == ["deployed", "paused"] or {"deployed", "paused"} <= set(kinds), kinds
                deadline = time.monotonic() + 15  # the page reloads its tables every 5 s; gates appear once evaluated
                while True:
                    gates = await page.evaluate(f'fetch("/api/strategy/{DEMO_STRATEGY}").then(r => r.json())'
                                                '.then(d => d.gates.map(g => g.metric))')
                    shown = await page.locator("#gates tbody tr td:first-child").all_inner_texts()
                    if sorted(shown) == sorted(gates) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                assert sorted(shown) == sorted(gates), (shown, gates)
                await page.screenshot(path=str(shots / "rollout.png"), full_page=True)

                # 6b. The incidents: the dashboard's halt listed with alice as its sender, its review one click away.
                await page.goto(url + "/incidents")
                listed = page.locator("#incidents tbody tr").filter(has_text="dashboard test halt")
                await listed.first.wait_for(timeout=10_000)
                line = await listed.first.inner_text()
                assert strategy in line and "halt" in line and "alice" in line, line
                await page.screenshot(path=str(shots / "incidents.png"), full_page=True)
                await listed.first.locator("a").click()
                await page.locator("#timeline svg").wait_for(timeout=20_000)
                assert strategy in await page.title()
                assert await page.locator("#events tbody tr").count() > 0
                await page.screenshot(path=str(shots / "incident.png"), full_page=True)

                # 7. A control request from elsewhere (no dashboard header) is refused even with the session.
                cookies = await page.context.cookies()
                session = {c["name"]: c["value"] for c in cookies}
                async with aiohttp.ClientSession(cookies=session) as http:
                    async with http.post(url + f"/api/control/{strategy}", json={"command": "halt"}) as response:
                        assert response.status == 403
            finally:
                await browser.close()
        # The audit trail names the person who pressed.
        senders = [json.loads(m.data) async for m in bus.read_stream(nc, subjects.STREAM_AUDIT,
                                                                      subjects.audit_control(strategy))]
        assert {(a["command"]["command"], a["sender"]) for a in senders} >= {("halt", "alice"), ("resume", "alice")}
    finally:
        await nc.close()
        await runner.cleanup()
    for name in ("login", "overview", "halted", "resumed", "strategy", "verification", "rollout", "incidents",
                 "incident"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name
    print(f"\ndashboard: halt pressed → HALTED on the other page in {on_screen_s:.2f} s")  # noqa: T201
