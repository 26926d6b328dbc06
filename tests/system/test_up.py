"""`qmp up --set NAME=VALUE`: a setting given on the command line is the one the running services use; and
`qmp kill` on the stack it runs: the venue's answer comes back to the operator, the halt holds until a resume."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_readme import QMP, START_TIMEOUT_S, clean_env, ctrl_c_works, qmp

pytestmark = pytest.mark.system


def test_up_when_settings_given_then_the_services_run_with_them_and_a_kill_is_confirmed_by_the_venue(
        tmp_path: Path) -> None:
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([*QMP, "up", "--no-warm-spares", "--set", "initial_capital=250000",
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
        killed = qmp(["kill", "vol_target", "--flatten", "--reason", "kill test"], tmp_path)
        after_kill = json.loads(qmp(["status", "--json"], tmp_path).stdout)["strategies"]["vol_target"]
        resumed = qmp(["resume", "vol_target"], tmp_path)
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=90)
        log.close()

    assert services["execution"]["detail"]["initial_capital"] == 250000.0
    assert services["risk"]["detail"]["drawdown_halt"] == 0.2
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert "vol_target" in killed.stdout and "paper" in killed.stdout and "yes" in killed.stdout  # confirmed
    assert (after_kill["status"], after_kill["reason"], after_kill["flatten"]) == ("HALTED", "kill test", True)
    assert resumed.returncode == 0 and '"status": "ACTIVE"' in resumed.stdout
