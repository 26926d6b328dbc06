"""`qmp sweep`: a grid from TOML, each set backtested (its rows the same on Ray: libs/qmp_lab/tests/test_parallel.py),
best first in a table, a CSV of every set; a grid that is not one is refused."""

import json
from pathlib import Path

from typer.testing import CliRunner

from qmp_ops.cli.main import app

STRATEGY = "qmp_lab.strategies.vol_target:VolatilityTarget"


def test_sweep_when_run_then_every_set_in_json_and_a_csv_and_a_bad_grid_refused(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text("target_volatility = [0.05, 0.2]\nvolatility_span = [20, 60]\n")
    common = ["sweep", STRATEGY, "--grid", str(grid), "--start", "2006-01-01", "--end", "2007-12-31",
              "--reports", str(tmp_path / "reports"), "--workers", "1"]

    as_json = CliRunner().invoke(app, [*common, "--json"])
    as_table = CliRunner().invoke(app, common, env={"COLUMNS": "200"})
    (tmp_path / "bad.toml").write_text("target_volatility = 0.1\n")
    bad = CliRunner().invoke(app, ["sweep", STRATEGY, "--grid", str(tmp_path / "bad.toml")])

    assert as_json.exit_code == 0, as_json.output
    record = json.loads(as_json.output)
    assert record["sets"] == 5 and record["workers"] == "this process"  # its own config, then the grid's four
    assert {row["config"]["target_volatility"] for row in record["rows"]} == {0.05, 0.1, 0.2}
    lines = Path(record["csv"]).read_text().splitlines()
    assert lines[0].startswith("config,annual_return") and len(lines) == 6
    assert as_table.exit_code == 0 and "5 sets" in as_table.output and "Sharpe" in as_table.output
    assert bad.exit_code == 2 and "non-empty list" in bad.output
