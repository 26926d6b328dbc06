"""`qmp sweep`: a grid from TOML, each set backtested, the same rows in one process and on two Ray workers, a
CSV of every set; a grid that is not one is refused."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qmp_ops.cli.main import app

STRATEGY = "qmp_lab.strategies.vol_target:VolatilityTarget"


def test_sweep_when_run_here_and_on_ray_then_the_same_rows_and_a_csv(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    grid = tmp_path / "grid.toml"
    grid.write_text("target_volatility = [0.05, 0.2]\nvolatility_span = [20, 60]\n")
    common = ["sweep", STRATEGY, "--grid", str(grid), "--start", "2006-01-01", "--end", "2007-12-31",
              "--reports", str(tmp_path / "reports"), "--json"]
    try:
        here = CliRunner().invoke(app, [*common, "--workers", "1"])
        spread = CliRunner().invoke(app, [*common, "--workers", "2"])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    (tmp_path / "bad.toml").write_text("target_volatility = 0.1\n")
    bad = CliRunner().invoke(app, ["sweep", STRATEGY, "--grid", str(tmp_path / "bad.toml")])

    assert here.exit_code == 0, here.output
    assert spread.exit_code == 0, spread.output
    first, second = json.loads(here.output), json.loads(spread.output)
    assert first["sets"] == 5 and first["rows"] == second["rows"]  # its own config, then the grid's four
    assert first["workers"] == "this process" and second["workers"] == "2 Ray workers on this machine"
    lines = Path(first["csv"]).read_text().splitlines()
    assert lines[0].startswith("config,annual_return") and len(lines) == 6
    assert bad.exit_code == 2 and "non-empty list" in bad.output
