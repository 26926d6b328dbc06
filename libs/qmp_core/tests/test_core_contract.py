"""docs/CONTRACT.md is generated from the code, and the contract's table names real subjects and messages."""

from pathlib import Path

import pytest

from qmp_core import subjects
from qmp_core.contract import CHANNELS, CONTRACT_MESSAGES, example_subject, render

CONTRACT_FILE = Path(__file__).resolve().parents[3] / "docs" / "CONTRACT.md"


def test_contract_file_when_rendered_from_the_code_then_identical() -> None:
    stale = "docs/CONTRACT.md is stale: run `qmp contract --write docs/CONTRACT.md`"
    assert CONTRACT_FILE.read_text() == render(), stale


def test_channels_when_listed_then_every_contract_message_travels_somewhere_and_none_unknown() -> None:
    carried = {channel.message for channel in CHANNELS}

    assert carried == set(CONTRACT_MESSAGES)


@pytest.mark.parametrize(("pattern", "subject"), [
    ("qmp.md.<venue>.bars", subjects.bars("sp500")),
    ("qmp.ingest.<venue>", subjects.ingest("sp500")),
    ("qmp.exec.<strategy>.orders", subjects.orders("vol_target")),
    ("qmp.exec.<strategy>.fills", subjects.fills("vol_target")),
    ("qmp.exec.<strategy>.portfolio", subjects.portfolio("vol_target")),
    ("qmp.exec.<strategy>.kill", subjects.kill_reports("vol_target")),
    ("qmp.exec.<strategy>.reconciliation", subjects.reconciliation_reports("vol_target")),
    ("qmp.exec.<strategy>.halt_request", subjects.halt_requests("vol_target")),
    ("qmp.risk.<strategy>.snapshot", subjects.snapshot("vol_target")),
    ("qmp.risk.<strategy>.breaker", subjects.breaker_events("vol_target")),
    ("qmp.risk.<strategy>.stoploss", subjects.stop_loss("vol_target")),
    ("qmp.control.<sender>.<strategy>", subjects.control("vol_target", "alice")),
    ("qmp.control.<sender>.<strategy>.urgent", subjects.control("vol_target", "alice", urgent=True)),
    ("qmp.state.<strategy>", subjects.state("vol_target")),
    ("qmp.audit.control.<strategy>", subjects.audit_control("vol_target")),
    ("qmp.limits.<sender>.<strategy>", subjects.limits("vol_target", "alice")),
    ("qmp.audit.limits.<strategy>", subjects.audit_limits("vol_target")),
    ("qmp.deploy.<strategy>.cmd", subjects.deploy_commands("vol_target")),
    ("qmp.deploy.<strategy>.events", subjects.deploy_events("vol_target")),
    ("qmp.dlq.<service>", subjects.dlq("risk")),
    ("qmp.health.<service>", subjects.health("risk")),
    ("qmp.broker.<instance>", subjects.broker("execution")),
    ("<strategy>.<source>", subjects.control_key("vol_target", "operator")),
    ("rollout.<strategy>", subjects.rollout_key("vol_target")),
])
def test_channel_subject_when_placeholders_filled_then_what_the_services_use(pattern: str, subject: str) -> None:
    assert pattern in {channel.subject for channel in CHANNELS}
    assert example_subject(pattern) == subject


def test_control_subject_when_halts_lane_or_a_strategy_named_urgent_then_told_apart() -> None:
    lane = subjects.control("vol_target", "alice", urgent=True)
    named = subjects.control("urgent", "alice")

    assert subjects.is_urgent(lane) and not subjects.is_urgent(named)
    assert subjects.control_sender_and_strategy(lane) == ("alice", "vol_target")
    assert subjects.control_sender_and_strategy(named) == ("alice", "urgent")
    with pytest.raises(ValueError, match="not a control subject"):
        subjects.control_sender_and_strategy("qmp.control.alice.vol_target.other")
