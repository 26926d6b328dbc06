"""Research pieces in this process and on a local Ray cluster: the same walk-forward and sweep numbers either way, a
piece that fails once retried, one that keeps failing named (never silently dropped)."""

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qmp_core.datasets import load_sp500_prices
from qmp_kernels.stress import (
    MC_A,
    MC_B,
    MC_FIELDS,
    MC_JUMP_INTENSITY,
    MC_JUMP_MEAN,
    MC_JUMP_STD,
    MC_NU,
    MC_OMEGA,
    MC_SIGMA2_0,
)
from qmp_lab.parallel import IN_PROCESS, TaskFailed, Workers, run_tasks
from qmp_lab.scenarios import monte_carlo_block, monte_carlo_blocks
from qmp_lab.sweep import read_grid, sweep
from qmp_lab.verify import walk_forward
from qmp_lab.verify.core import StrategyTarget, VerifyContext

SYMBOLS = ["AAPL", "AMD", "BAC", "CVX", "GE", "JPM", "KO", "XOM"]
ON_RAY = Workers(count=2)


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    return load_sp500_prices("2005-01-01", "2007-12-31", SYMBOLS)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    yield
    if ray.is_initialized():
        ray.shutdown()


def square(offset: int, item: int) -> int:
    return item * item + offset


def flaky(marks: Path, item: int) -> int:
    """Fails the first time it sees an item (a mark file says it was seen), then answers."""
    mark = marks / f"seen-{item}"
    if item % 2 and not mark.exists():
        mark.touch()
        raise RuntimeError(f"first attempt at {item}")
    return item


def broken(_: None, item: int) -> int:
    if item == 3:
        raise ValueError("no data for 3")
    return item


@pytest.mark.parametrize("workers", [IN_PROCESS, ON_RAY], ids=["in-process", "ray"])
def test_run_tasks_when_pieces_fail_once_or_always_then_retried_or_named(workers: Workers, tmp_path: Path,
                                                                          ray_cluster: None) -> None:
    progress: list[tuple[int, int]] = []

    assert run_tasks(square, 1, list(range(6)), workers, lambda done, total: progress.append((done, total))) == [
        1, 2, 5, 10, 17, 26]
    assert progress[-1] == (6, 6) and len(progress) == 6
    assert run_tasks(flaky, tmp_path, list(range(5)), workers) == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seen-1", "seen-3"]  # each odd piece failed once
    with pytest.raises(TaskFailed, match=r"piece 4 \(3\) failed twice: ValueError: no data for 3") as failed:
        run_tasks(broken, None, list(range(6)), workers)
    assert failed.value.index == 3


def test_walk_forward_when_on_ray_then_every_fold_and_configuration_as_in_one_process(
        prices: pd.DataFrame, tmp_path: Path, ray_cluster: None) -> None:
    def out_of_sample(workers: Workers) -> dict:
        ctx = VerifyContext(target=StrategyTarget("leaky_strategies:FittedMomentum"), out_dir=tmp_path,
                            options={"folds": 8, "cpcv_groups": 5, "cpcv_test_groups": 2}, workers=workers)
        found = walk_forward.out_of_sample(ctx, prices, True, [])
        return {"metrics": found["metrics"], "oos": found["oos"]}

    here, spread = out_of_sample(IN_PROCESS), out_of_sample(ON_RAY)

    assert len(here["metrics"]["fold_sharpe"]) == 7 and all(math.isfinite(s) for s in here["metrics"]["fold_sharpe"])
    assert spread["metrics"] == here["metrics"]  # the same numbers, to the bit
    pd.testing.assert_series_equal(spread["oos"], here["oos"], check_exact=True)


def test_sweep_when_on_ray_then_the_same_rows_as_in_one_process(prices: pd.DataFrame, tmp_path: Path,
                                                                 ray_cluster: None) -> None:
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text("target_volatility = [0.05, 0.1, 0.2]\nvolatility_span = [20, 60]\n")
    target = StrategyTarget("qmp_lab.strategies.vol_target:VolatilityTarget")

    here = sweep(target, read_grid(grid_file), prices)
    spread = sweep(target, read_grid(grid_file), prices, ON_RAY)

    assert [dataclasses.asdict(r) for r in spread] == [dataclasses.asdict(r) for r in here]
    assert len(here) == 6  # its own config first, then the grid's other five (its own is in the grid: kept once)
    assert here[0].config["target_volatility"] == 0.10 and here[0].config["volatility_span"] == 20
    # a higher volatility target takes more risk: higher volatility at the same span
    by_config = {(r.config["target_volatility"], r.config["volatility_span"]): r for r in here}
    assert by_config[(0.2, 60)].annual_volatility > by_config[(0.05, 60)].annual_volatility
    (tmp_path / "bad.toml").write_text("target_volatility = 0.1\n")
    with pytest.raises(ValueError, match="non-empty list"):
        read_grid(tmp_path / "bad.toml")


def test_monte_carlo_when_its_blocks_run_on_ray_then_the_same_paths_as_in_one_process(ray_cluster: None) -> None:
    params = np.zeros(MC_FIELDS)
    params[[MC_OMEGA, MC_A, MC_B, MC_NU, MC_SIGMA2_0]] = [1e-6, 0.08, 0.9, 6.0, 1e-4]
    params[[MC_JUMP_INTENSITY, MC_JUMP_MEAN, MC_JUMP_STD]] = [0.02, -0.02, 0.03]
    blocks = monte_carlo_blocks(2_500, seed=3)

    here = run_tasks(monte_carlo_block, (params, 252), blocks)
    spread = run_tasks(monte_carlo_block, (params, 252), blocks, ON_RAY)

    assert [n for n, _ in blocks] == [1_000, 1_000, 500] and len({s for _, s in blocks}) == 3
    for (a_dd, a_tot), (b_dd, b_tot) in zip(here, spread, strict=True):
        np.testing.assert_array_equal(a_dd, b_dd)
        np.testing.assert_array_equal(a_tot, b_tot)
    assert 0.0 < float(np.median(np.concatenate([dd for dd, _ in here]))) < 1.0
    assert monte_carlo_blocks(2_500, seed=4)[0][1] != blocks[0][1]  # another seed, other paths
