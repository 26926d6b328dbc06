"""Stressed scenarios shared by `qmp stress` and `qmp portfolio test`: the crisis episodes of the bundled history,
and returns re-correlated to a level with each column's volatility kept."""

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
