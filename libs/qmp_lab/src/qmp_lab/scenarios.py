"""Stressed scenarios shared by `qmp stress` and `qmp portfolio test`: the crisis episodes of the bundled history,
returns re-correlated to a level with each column's volatility kept, and the Monte Carlo's paths in blocks."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    name: str
    start: str
    end: str


EPISODES = (Episode("2008 Lehman / GFC", "2008-09-15", "2008-11-20"),
            Episode("2020 Covid crash", "2020-02-19", "2020-03-23"))


def recorrelate(returns: np.ndarray, rho: float) -> np.ndarray:
    """Return the scenarios re-correlated to `rho` between every pair, each column's volatility kept."""
    complete = returns[np.isfinite(returns).all(axis=1)]
    if complete.shape[1] < 2:
        return complete
    mean = complete.mean(axis=0)
    cov = np.cov(complete, rowvar=False)
    vols = np.sqrt(np.diag(cov))
    target = np.full(cov.shape, rho)
    np.fill_diagonal(target, 1.0)
    try:
        whiten = np.linalg.inv(np.linalg.cholesky(cov))
        color = np.linalg.cholesky(target * np.outer(vols, vols))
    except np.linalg.LinAlgError:
        return complete  # singular: the scenarios already move together
    return (complete - mean) @ whiten.T @ color.T + mean


PATHS_PER_BLOCK = 1_000  # Monte Carlo paths per piece of work


def monte_carlo_blocks(paths: int, seed: int) -> list[tuple[int, int]]:
    """The Monte Carlo's pieces: (paths, seed) each, `PATHS_PER_BLOCK` paths a block, each block's seed drawn from
    (seed, block) so the paths are the same however many processes run the blocks."""
    blocks = []
    for block, start in enumerate(range(0, paths, PATHS_PER_BLOCK)):
        state = np.random.SeedSequence([seed, block]).generate_state(1)[0]
        blocks.append((min(PATHS_PER_BLOCK, paths - start), int(state)))
    return blocks


def monte_carlo_block(shared: tuple[np.ndarray, int], block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One block of GARCH-t-with-jumps paths (a piece `run_tasks` runs): shared = (the model's parameters, the
    horizon in days); returns (max drawdown, total return) per path. Raises ValueError on parameters the kernel
    refuses."""
    from qmp_kernels import status
    from qmp_kernels.stress import garch_t_jump_max_drawdown_nb

    params, horizon = shared
    paths, seed = block
    drawdowns, totals, code = garch_t_jump_max_drawdown_nb(params, horizon, paths, seed)
    if code != status.OK:
        raise ValueError(f"Monte Carlo rejected its parameters: {status.NAMES[code]}")
    return drawdowns, totals
