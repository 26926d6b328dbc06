"""`qmp up --set NAME=VALUE`: a setting given on the command line is the one the running services use, and
`--capital` with `--account` is the books' capital and an account of it;
`qmp kill` on the stack it runs: the venue's answer comes back to the operator, the halt holds until a resume;
and `qmp up --source exchange`: a crypto exchange's bars (ccxt against a fake of Binance) flow live."""

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
from test_readme import QMP, START_TIMEOUT_S, clean_env, ctrl_c_works, qmp

from qmp_venues.fake_exchange import FakeExchange

pytestmark = pytest.mark.system


def test_up_when_settings_given_then_the_services_run_with_them_and_a_kill_is_confirmed_by_the_venue(
        tmp_path: Path) -> None:
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([*QMP, "up", "--no-warm-spares", "--capital", "250000", "--account", "main",
                           "--set", "QMP_DRAWDOWN_HALT=0.2"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                          env=clean_env(), start_new_session=True, preexec_fn=ctrl_c_works)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "qmp up did not bring the stack up"
            shown = qmp(["status", "--json"], tmp_path) if (tmp_path / ".qmp" / "connection.json").exists() else None
            services = json.loads(shown.stdout)["services"] if shown is not None and not shown.returncode else {}
            if services and all(h.get("status") == "ok" for h in services.values()):
                break
            time.sleep(1.0)
        for _ in range(40):  # `qmp up` adds the account once every service is healthy
            accounts = json.loads(qmp(["accounts", "list", "--json"], tmp_path).stdout)
            if accounts:
                break
            time.sleep(0.5)
        killed = qmp(["kill", "vol_target", "--flatten", "--reason", "kill test"], tmp_path)
        after_kill = json.loads(qmp(["status", "--json"], tmp_path).stdout)["strategies"]["vol_target"]
        resumed = qmp(["resume", "vol_target"], tmp_path)
        # The rollback procedure's first step: everything stopped and the state kept, then a safe resume.
        stopped = qmp(["emergency-stop", "--reason", "drill", "--out", str(tmp_path / "emergency")], tmp_path)
        after_stop = json.loads(qmp(["status", "--json"], tmp_path).stdout)["strategies"]["vol_target"]
        safe = qmp(["resume", "vol_target", "--safe"], tmp_path)
    finally:
        # Ctrl-C as `./dev up` gets it: the terminal's, then the launcher's copy while the stack is stopping.
        os.killpg(up.pid, signal.SIGINT)
        time.sleep(0.5)
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=90)
        log.close()
    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
            if any(str(tmp_path) in part for part in p.info["cmdline"] or [])]

    assert left == [], f"still running after qmp up stopped: {left}"  # no service, nats-server, PostgreSQL
    assert "stopped" in (tmp_path / "up.log").read_text()
    assert services["execution"]["detail"]["initial_capital"] == 250000.0
    assert [(a["account"], a["capital"], a["venue"], a["sender"]) for a in accounts] == [
        ("main", 250000.0, "paper", "operator")]
    assert services["risk"]["detail"]["drawdown_halt"] == 0.2
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert "vol_target" in killed.stdout and "paper" in killed.stdout and "yes" in killed.stdout  # confirmed
    assert (after_kill["status"], after_kill["reason"], after_kill["flatten"]) == ("HALTED", "kill test", True)
    assert resumed.returncode == 0 and '"status": "ACTIVE"' in resumed.stdout
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert (after_stop["status"], after_stop["reason"], after_stop["flatten"]) == ("HALTED", "drill", True)
    state = json.loads((tmp_path / "emergency" / "state.json").read_text())
    assert state["confirmed"] is True and state["kill"]["accepted"] is True
    assert [(r["strategy"], r["confirmed"]) for r in state["reports"]] == [("vol_target", True)]
    assert state["buckets"]["qmp_control"]["ALL.operator"]["status"] == "HALTED"  # the stop, as it was saved
    assert "vol_target" in state["books"] and "equity" in state["books"]["vol_target"]
    assert safe.returncode == 0 and '"safe_mode": true' in safe.stdout


@contextmanager
def exchange_in_a_thread(fake: FakeExchange) -> Iterator[FakeExchange]:
    """Serve a fake exchange from a thread of its own (the test drives `qmp` as processes)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-exchange", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(30)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_up_when_the_source_is_an_exchange_then_its_closed_bars_flow_live_to_every_service(tmp_path: Path) -> None:
    fake = FakeExchange()
    minute_ms = 60_000
    start_ms = (int(time.time() * 1000) // minute_ms - 59) * minute_ms  # 60 one-minute bars, the last one forming
    rng = np.random.default_rng(3)
    for market, price in (("BTCUSDT", 60_000.0), ("ETHUSDT", 3_000.0)):
        fake.add_bars(market, start_ms, list(price * np.exp(np.cumsum(rng.normal(0, 0.002, 60)))))
    with exchange_in_a_thread(fake):
        log = (tmp_path / "up.log").open("w")
        up = subprocess.Popen([*QMP, "up", "--no-warm-spares", "--source", "exchange",
                               "--set", "venue_symbols=BTC/USDT,ETH/USDT", "--set", f"exchange_url={fake.url}",
                               "--set", "venue_backfill_bars=59", "--set", "venue_poll_s=1"],
                              cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
                              start_new_session=True, preexec_fn=ctrl_c_works)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            services: dict = {}
            while True:
                assert up.poll() is None, (tmp_path / "up.log").read_text()
                assert time.monotonic() < deadline, f"the exchange's bars did not flow: {services}"
                shown = qmp(["status", "--json"], tmp_path) if (tmp_path / ".qmp" / "connection.json").exists() \
                    else None
                services = json.loads(shown.stdout)["services"] if shown is not None and not shown.returncode else {}
                published = services.get("collector", {}).get("detail", {}).get("published", 0)
                batches = services.get("execution", {}).get("detail", {}).get("batches", 0)
                if published >= 59 and batches >= 59:
                    break
                time.sleep(1.0)
        finally:
            os.killpg(up.pid, signal.SIGINT)
            up.wait(timeout=90)
            log.close()

    collector = services["collector"]["detail"]
    assert collector["rejected"] == 0 and collector["dead_letters"] == 0
    # Each batch is stamped at its bar's close, and a bar still forming is never published: the last one is the
    # 59th or (once its minute is over) the 60th, never later than the clock.
    assert collector["last_ts"] // 1_000_000 - start_ms in (59 * minute_ms, 60 * minute_ms)
    assert collector["last_ts"] <= time.time_ns()
