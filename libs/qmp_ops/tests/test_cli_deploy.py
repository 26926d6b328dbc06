"""`qmp rollout status` and `qmp history`: what the tables say about a rollout's phase and soak."""

import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client
from rich.console import Console
from typer.testing import CliRunner

from qmp_core.clock import NS_PER_HOUR
from qmp_core.messages import DeploymentEvent, RolloutPhase, RolloutState
from qmp_ops.cli.deploy import _soak_text, history_table, read_history, rollout_table
from qmp_ops.cli.main import app
from qmp_ops.emergency import publish_alert, publish_unlock
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import operator_connection

PHASES = [RolloutPhase(name="paper", env="paper", allocation=0.0, min_soak_s=24 * 3600.0, min_fills=10),
          RolloutPhase(name="live10", env="live", allocation=0.1, min_soak_s=48 * 3600.0, min_notional_hours=500.0)]


def rollout(**fields: object) -> RolloutState:
    return RolloutState(strategy="s", rollout_id="r", plan="default", phases=PHASES, **fields)  # type: ignore[arg-type]


def render(renderable: object) -> str:
    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


def test_soak_text_when_soaking_then_hours_and_fills_left_and_notional_only_where_the_phase_needs_it() -> None:
    assert _soak_text(rollout(soak_elapsed_ns=6 * NS_PER_HOUR, fills=4)) == "18.0h, 6 fills"
    assert _soak_text(rollout(phase_index=1, notional_hours=100.0)) == "48.0h, 0 fills, 400 notional-h"


def test_soak_text_when_aborted_or_complete_or_below_first_phase_then_dash() -> None:
    assert _soak_text(rollout(status="ABORTED")) == "—"
    assert _soak_text(rollout(status="COMPLETE", phase_index=1)) == "—"
    assert _soak_text(rollout(phase_index=-1)) == "—"


def test_rollout_table_when_state_given_then_phase_name_step_and_allocation_shown() -> None:
    text = render(rollout_table({"s": rollout(phase_index=1, allocation=0.1, status="HOLDING")}, 0))

    assert "live10" in text and "2/2" in text and "10%" in text and "HOLDING" in text
    assert "none" in render(rollout_table({"s": rollout(status="ABORTED")}, 0))


def test_history_table_when_events_given_then_one_row_each_with_transition_and_actor() -> None:
    event = DeploymentEvent(strategy="s", rollout_id="r", seq=1, kind="promoted", phase_from="paper",
                            phase_to="live10", ts_event=0, issued_by="operator", reason="soak done")

    text = render(history_table("s", [event]))

    assert "paper → live10" in text and "operator" in text and "1970-01-01 00:00:00" in text


@pytest.mark.integration
async def test_read_history_when_a_verification_alert_and_an_unlock_were_published_then_both_in_the_trail(
        nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, unique_id: str,
        tmp_path) -> None:
    # issue 11 #2: the failed verification's alert reached the stream but `qmp history` read only the database.
    connection = operator_connection(nats_credentials, database_url=database_url, run_dir=str(tmp_path))
    await publish_alert(connection, unique_id, "verification failed: walk_forward")
    await publish_unlock(connection, unique_id, "reviewed the walk-forward report")

    events = await read_history(connection, unique_id)

    assert [(e.kind, e.issued_by) for e in events] == [("alert", "verify"), ("unlocked", "operator")]
    assert events[0].reason == "verification failed: walk_forward"


def test_rollout_table_when_no_rollouts_then_it_says_so_in_words() -> None:
    assert "no rollouts yet" in render(rollout_table({}, 0))


def test_deploy_when_live_confirmed_but_execution_trades_on_paper_then_refused_saying_a_venue_is_needed(
        nats_credentials: NatsCredentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    user, password = nats_credentials.for_user("operator")
    flags = ["--nats-url", nats_credentials.url, "--nats-user", user, "--nats-password", password,
             "--nats-tls-ca", nats_credentials.tls_ca]
    instance = "nobroker" + uuid.uuid4().hex[:6]  # no execution instance of that name answers broker commands

    result = CliRunner().invoke(app, [*flags, "deploy", "s1", "--env", "paper", "--confirm-live",
                                      "--skip-verification", "--instance", instance], env={"COLUMNS": "300"})

    assert result.exit_code == 1, result.output
    assert "live trading needs a venue with credentials" in result.output and "paper broker" in result.output
