"""`qmp limits apply | show`: the operators' file of pre-trade limits, through a real deployer to a real
execution service, and the limits execution then reports in force with where each comes from."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qmp_core.messages import PreTradeLimits
from qmp_deployer.app import create_app
from qmp_execution.app import ExecutionService, settings_from
from qmp_ops.cli.limits import LimitsFileError, _apply, _show, read_history, read_limits_file, sources
from qmp_ops.cli.main import app as qmp
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import operator_connection, settings_for


def test_read_limits_file_when_the_example_is_read_then_every_limit_in_it_is_one_execution_knows() -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "limits.toml"

    limits = read_limits_file(example)

    assert sorted(limits) == ["ALL", "vol_target"]
    assert limits["ALL"].restricted_symbols == ["GME", "AMC"] and limits["vol_target"].price_collar == 0.2


def test_read_limits_file_when_valid_then_limits_by_strategy(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text('[ALL]\nmax_order_notional = 250_000\nrestricted_symbols = ["GME"]\n\n'
                    '[vol_target]\nmax_order_rate = 20\nprice_collar = 0.05\n')

    assert read_limits_file(path) == {
        "ALL": PreTradeLimits(max_order_notional=250_000.0, restricted_symbols=["GME"]),
        "vol_target": PreTradeLimits(max_order_rate=20, price_collar=0.05)}


@pytest.mark.parametrize(("text", "says"), [
    ("[vol]\nmax_leverage = 3\n", "[vol]: Object contains unknown field `max_leverage`"),
    ("[vol]\nmax_order_notional = -1\n", "[vol]: Expected `float` >= 0.0"),
    ("[vol]\nmax_order_rate = 2.5\n", "[vol]: Expected `int | null`, got `float`"),
    ('["no way"]\nmax_order_rate = 1\n', "[no way]: strategy must match"),
    ("max_order_rate = 1\n", "max_order_rate must be a table"),
    ("[vol\n", "limits.toml: "),
])
def test_read_limits_file_when_wrong_then_the_error_names_the_table_and_field(tmp_path: Path, text: str,
                                                                               says: str) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(text)

    with pytest.raises(LimitsFileError) as raised:
        read_limits_file(path)
    assert says in str(raised.value) and str(path) in str(raised.value)


def test_apply_when_the_file_is_wrong_then_exit_1_saying_why_before_anything_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text("[vol]\nmax_order_notional = -1\n")

    result = CliRunner().invoke(qmp, ["limits", "apply", str(path)])

    assert result.exit_code == 1 and "max_order_notional" in result.output


@pytest.mark.integration
async def test_apply_then_show_when_deployer_and_execution_run_then_limits_in_force_with_their_source(
        nats_credentials: NatsCredentials, database_url: str, operator_nc: object, unique_id: str,
        tmp_path: Path) -> None:
    sid = unique_id
    path = tmp_path / "limits.toml"
    path.write_text(f'[ALL]\nmax_order_rate = 1000\n\n[{sid}]\nmax_order_notional = 100_000\n'
                    f'restricted_symbols = ["BBB", "AAA"]\n')
    alice = operator_connection(nats_credentials, "alice")
    deployer = create_app(settings_for(nats_credentials, "deployer", database_url, run_dir=str(tmp_path)))
    execution = ExecutionService(settings_from(
        settings_for(nats_credentials, "execution", database_url),
        strategies=f"{sid}=qmp_lab.strategies.vol_target:VolatilityTarget", venues=[sid], execution_instance=sid))
    async with deployer:
        await execution.app.start()
        try:
            applied = await _apply(alice, read_limits_file(path), "launch", dry_run=False)
            entries, in_force = await _show(alice)
            audited = await read_history(alice, sid, 10)
            again = await _apply(alice, read_limits_file(path), "", dry_run=False)
            path.write_text(f"[{sid}]\nmax_order_notional = 50_000\n")
            dry = await _apply(alice, read_limits_file(path), "", dry_run=True)
            unchanged_after_dry, _ = await _show(alice)
        finally:
            path.write_text("")
            cleared = await _apply(alice, {}, "tidy up", dry_run=False)
            await execution.app.stop()

    mine = ("ALL", sid)  # the session's server may hold other tests' limits: the file removes those too
    assert {key: (r.accepted, r.changed) for key, r in applied.items() if key in mine and r is not None} == {
        "ALL": (True, ["max_order_rate"]), sid: (True, ["max_order_notional", "restricted_symbols"])}
    limits = in_force[sid]
    assert (limits["max_order_notional"], limits["max_order_rate"], limits["restricted_symbols"]) == (
        100_000.0, 1000, ["AAA", "BBB"])
    origin = sources(sid, entries)
    assert origin["max_order_notional"] == f"{sid} (set by alice)" and origin["max_order_rate"] == "ALL (set by alice)"
    assert origin["price_band"] == "setting QMP_PRICE_BAND"
    assert [(c.sender, c.reason, c.changed) for c in audited] == [
        ("alice", "launch", ["max_order_notional", "restricted_symbols"])]
    assert audited[0].after.restricted_symbols == ["AAA", "BBB"] and audited[0].before == PreTradeLimits()
    assert again == {"ALL": None, sid: None}
    assert dry[sid] is not None and dry[sid].changed == ["max_order_notional", "restricted_symbols"]
    assert dry["ALL"] is not None and dry["ALL"].changed == ["max_order_rate"]  # not in the file: it would go
    assert unchanged_after_dry[sid].limits.max_order_notional == 100_000.0
    assert {key: r.entry for key, r in cleared.items() if r is not None} == {"ALL": None, sid: None}
    assert all(r is None or r.accepted for r in applied.values())
