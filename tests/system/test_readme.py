"""The README's first hour, run as written: `qmp up`, then the operator's commands in another terminal.

Each `./dev <verb>` line of the README's "Your first hour" block is run as `qmp <verb>` (the README says they
are the same), with the stack `qmp up` started. `verify` replays crises for minutes: the default run skips
it and checks that the deploy is then refused; `QMP_SLOW=1` runs it as written and checks that the deploy it
opens is accepted. `rollout status --watch` refreshes until interrupted, so it is interrupted after its
first screen.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
QMP = [sys.executable, "-m", "qmp_ops.cli.main"]
START_TIMEOUT_S = 180.0
EVERY_SERVICE = {"qmp_service_status", "qmp_service_uptime_seconds", "process_resident_memory_bytes",
                 "qmp_messages_published_total"}
# What each service's metrics endpoint holds once data flows and vol_target is halted (sample names).
EXPORTED = {
    "collector": EVERY_SERVICE | {"qmp_bars_published_total"},
    "risk": EVERY_SERVICE | {"qmp_risk_var", "qmp_risk_es", "qmp_risk_drawdown", "qmp_risk_volatility_ratio",
                             "qmp_risk_equity", "qmp_batch_to_snapshot_seconds_bucket",
                             "qmp_consumer_pending_messages", "qmp_message_handling_seconds_bucket"},
    "execution": EVERY_SERVICE | {"qmp_orders_total", "qmp_fills_total", "qmp_equity", "qmp_allocation",
                                  "qmp_size_multiplier", "qmp_trading_status", "qmp_slippage_bps_bucket",
                                  "qmp_halt_to_denial_seconds_bucket", "qmp_consumer_pending_messages"},
    "deployer": EVERY_SERVICE | {"qmp_control_requests_total", "qmp_control_reply_seconds_bucket"},
}
VERIFY_TIMEOUT_S = 3600.0


def first_hour_commands() -> list[list[str]]:
    """Return the README's first-hour commands, `./dev` dropped, comments cut."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Your first hour", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("./dev "):
            commands.append(shlex.split(line, comments=True)[1:])
    return commands


def qmp(args: list[str], cwd: Path, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QMP, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                          env=clean_env())


def scrape(target: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def ctrl_c_works() -> None:
    # A test run in the background inherits SIGINT ignored, and Python then installs no Ctrl-C handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def clean_env() -> dict[str, str]:
    # The stack `qmp up` starts here is the one to talk to, whatever the shell running the tests names.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QMP_")}
    return env | {"COLUMNS": "200"}


# The verify line takes minutes of crisis replays: the whole run gets longer than the suite's 300 s when it runs.
@pytest.mark.timeout(VERIFY_TIMEOUT_S + START_TIMEOUT_S + 600 if os.environ.get("QMP_SLOW") else 300)
def test_readme_first_hour_when_run_as_written_then_each_command_does_what_its_comment_says(tmp_path: Path):
    commands = first_hour_commands()
    verbs = [c[0] for c in commands]
    assert verbs == ["up", "status", "halt", "status", "resume", "verify", "deploy", "rollout"], verbs

    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([*QMP, *commands[0]], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                          env=clean_env(), start_new_session=True, preexec_fn=ctrl_c_works)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (tmp_path / ".qmp" / "connection.json").exists() or qmp(["status", "--json"], tmp_path).returncode:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "qmp up did not bring the stack up"
            time.sleep(1.0)
        while True:  # the four services answer before the strategy has a state: wait for all of them
            status = json.loads(qmp(["status", "--json"], tmp_path).stdout)
            if all(h.get("status") == "ok" for h in status["services"].values()):
                break
            assert time.monotonic() < deadline, f"services not healthy: {status['services']}"
            time.sleep(1.0)

        shown = qmp(commands[1], tmp_path)
        assert shown.returncode == 0 and "deployer" in shown.stdout and "ok" in shown.stdout

        halted = qmp(commands[2], tmp_path)
        assert halted.returncode == 0, halted.stdout + halted.stderr
        assert json.loads(halted.stdout)["state"]["status"] == "HALTED"

        shown = qmp(commands[3], tmp_path)
        assert re.search(r"strategy vol_target\s+.*HALTED", shown.stdout) and "first try" in shown.stdout

        # Each service serves Prometheus metrics; `qmp up` lists them in a file_sd target file.
        run_dir = Path(json.loads((tmp_path / ".qmp" / "connection.json").read_text())["run_dir"])
        targets = json.loads((run_dir / "prometheus-targets.json").read_text())
        # Each endpoint parses with prometheus-client's own parser and holds what an operator watches; a halted
        # strategy's first denied order (the next bar) is timed from the halt.
        deadline = time.monotonic() + 60
        while True:
            scraped = {t["labels"]["service"]: scrape(t["targets"][0]) for t in targets}
            missing = {service: sorted(names - {name for name, _ in scraped.get(service, {})})
                       for service, names in EXPORTED.items()}
            if not any(missing.values()) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert sorted(scraped) == ["collector", "deployer", "execution", "risk"]
        assert not any(missing.values()), missing
        for service, samples in scraped.items():
            assert samples[("qmp_service_status", (("service", service), ("status", "ok")))] == 1.0, service
        assert scraped["deployer"][("qmp_control_requests_total", (("lane", "urgent"), ("outcome", "accepted")))] >= 1
        execution = scraped["execution"]
        assert execution[("qmp_trading_status", (("status", "HALTED"), ("strategy", "vol_target")))] == 1.0
        assert execution[("qmp_halt_to_denial_seconds_count", (("strategy", "vol_target"),))] >= 1

        # The launch report on this stack: each criterion against its target (the halt was a control request).
        launch = qmp(["report", "launch", "--out", str(tmp_path / "launch")], tmp_path)
        resumed = qmp(commands[4], tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        report = json.loads((tmp_path / "launch" / "launch.json").read_text())
        results = {c["name"]: (c["value"], c["passed"]) for c in report["criteria"]}
        assert set(results) == {"uptime", "error rate", "control response p99", "successful trades"}
        assert results["uptime"] == (1.0, True) and results["error rate"][1] is True
        assert results["control response p99"][0] is not None and results["control response p99"][1] is True
        # vol_target warms up for longer than this test runs: no order yet, so "no data", which does not pass
        assert results["successful trades"] == (None, False), report
        assert launch.returncode == 1 and "verdict: **FAIL**" in launch.stdout, launch.stdout + launch.stderr
        assert "| successful trades | no data | > 95% | FAIL | 0 of 0 accepted orders filled |" in launch.stdout
        assert (tmp_path / "launch" / "launch.html").read_text().count("<svg") == 1
        state = json.loads(resumed.stdout)["state"]
        assert (state["status"], state["safe_mode"], state["size_multiplier"]) == ("ACTIVE", True, 0.5)

        if os.environ.get("QMP_SLOW"):  # `verify` as written (minutes of crisis replays), then the deploy it opens
            verified = qmp(commands[5], tmp_path, timeout_s=VERIFY_TIMEOUT_S)
            assert verified.returncode == 0, verified.stdout[-4000:] + verified.stderr[-4000:]
            deployed = qmp(commands[6], tmp_path)
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
            assert '"accepted": true' in deployed.stdout and "paper" in deployed.stdout
        else:  # without a verification the deploy is refused, and says why
            refused = qmp(commands[6], tmp_path)
            assert refused.returncode == 1 and "refused" in refused.stdout and "verify" in refused.stdout

        watch = subprocess.Popen([*QMP, *commands[7]], cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=clean_env(), preexec_fn=ctrl_c_works)
        shown_lines: list[str] = []
        reader = threading.Thread(target=lambda: shown_lines.extend(iter(watch.stdout.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 90  # the CLI loads, reads the rollouts bucket, shows its first screen
        while not any("rollout" in line for line in shown_lines) and time.monotonic() < deadline:
            time.sleep(0.2)
        watch.send_signal(signal.SIGINT)  # Ctrl-C ends the watch
        watch.wait(timeout=30)
        reader.join(timeout=10)
        watch.stdout.close()
        screen = "".join(shown_lines)
        assert "rollout" in screen and "Traceback" not in screen
    finally:
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: `qmp up` stops the services and servers in order
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
        finally:
            log.close()
    assert up.returncode == 0, (tmp_path / "up.log").read_text()
    assert not (tmp_path / ".qmp" / "connection.json").exists()  # withdrawn on the way out
