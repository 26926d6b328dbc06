"""Rollout plans (engine/plan.py): the phases and the monitoring table in one file, what makes a plan invalid."""

from importlib import resources

import msgspec
import pytest
from deployer_testkit import PLAN_TOML, make_plan

from qmp_deployer.engine.plan import parse_plan


def default_plan_bytes() -> bytes:
    return resources.files("qmp_deployer").joinpath("default_plan.toml").read_bytes()


def test_parse_plan_when_default_file_then_phases_and_monitoring_table_as_specified():
    plan = parse_plan(default_plan_bytes())
    assert [(p.name, p.env, p.allocation) for p in plan.phases] == [
        ("paper", "paper", 0.1), ("live_10", "live", 0.1), ("live_50", "live", 0.5), ("live_100", "live", 1.0)]
    assert [p.min_soak_h for p in plan.phases] == [24.0, 48.0, 48.0, 48.0]
    assert plan.phases[-1].approval and not any(p.approval for p in plan.phases[:-1])
    table = {name: (m.warning, m.critical, m.action) for name, m in plan.metrics.items()}
    assert table == {
        "drawdown": (0.10, 0.15, "reduce_allocation"),
        "var_95": (0.05, 0.08, "halt_new_positions"),
        "slippage": (20.0, 50.0, "reduce_order_size"),
        "api_latency": (500.0, 1000.0, "switch_endpoint"),
        "memory": (2048.0, 4096.0, "restart_service"),
    }
    assert plan.metrics["drawdown"].action_factor == 0.5
    assert plan.metrics["drawdown"].fail_closed and plan.metrics["var_95"].fail_closed


@pytest.mark.parametrize(("old", "new", "message"), [
    (b'allocation = 0.5\nmin_soak_h = 1.0\n', b'allocation = 0.05\nmin_soak_h = 1.0\n', "must not decrease"),
    (b"warning = 0.10\ncritical = 0.15", b"warning = 0.20\ncritical = 0.15", "warning must be below"),
    (b'name = "live_50"', b'name = "paper"', "unique"),
    (b'source = "slippage_bps"', b'source = "vibes"', "source must be"),
    (b'gate_interval_s = 60.0', b'gate_interval_s = 60.0\ncolour = "red"', "unknown field"),
])
def test_parse_plan_when_invalid_then_rejected_with_what_is_wrong(old, new, message):
    text = PLAN_TOML.replace(old, new, 1)
    assert text != PLAN_TOML
    with pytest.raises(ValueError, match=message):
        parse_plan(text)


def test_parse_plan_when_paper_after_live_then_rejected():
    text = PLAN_TOML.replace(b'name = "live_50"\nenv = "live"', b'name = "live_50"\nenv = "paper"')
    with pytest.raises(ValueError, match="paper phases come before live"):
        parse_plan(text)


def test_parse_plan_when_json_then_same_plan_as_toml():
    plan = make_plan()
    assert parse_plan(msgspec.json.encode(plan), "json") == plan


