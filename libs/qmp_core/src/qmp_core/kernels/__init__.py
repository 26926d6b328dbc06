"""Numeric kernels: `@njit(cache=True)` functions named `*_nb` over float64 arrays, numpy and numba only.

Each module's docstring states its input contract and its formulas. Kernels return status codes
(`status.py`) with NaN where they cannot produce a number, and never raise in the hot loop: the risk
kernels are compiled with `error_model="numpy"`, so a division by zero gives inf / NaN (which they check)
instead of raising, and there is no per-division zero test in the generated code.

- special: normal, Student-t, incomplete beta / gamma, chi-square, binomial
- var: historical simulation (point, rolling), normal, Student-t, Cornish-Fisher, horizons
- fhs: EWMA and GARCH(1,1) filters, GARCH fit, filtered historical simulation
- evt: peaks over threshold, GPD tail by probability-weighted moments
- methods: every method at every level on one series (what the service and `qmp risk var` run)
- incremental: per-symbol state updated in place on every batch
- backtest: Kupiec, Christoffersen, Basel traffic light, Acerbi-Szekely Z2
- drawdown, vol: drawdowns and realized volatility
- stress: path drawdowns, GARCH-t-with-jumps Monte Carlo
- threads: column blocks of GIL-releasing kernels on a thread pool
"""

from qmp_core.kernels import (
    backtest,
    drawdown,
    evt,
    fhs,
    incremental,
    methods,
    special,
    status,
    stress,
    threads,
    var,
    vol,
)

__all__ = ["backtest", "drawdown", "evt", "fhs", "incremental", "methods", "special", "status", "stress", "threads",
           "var", "vol"]
