"""Numeric kernels: `@njit(cache=True)` functions named `*_nb` over float64 arrays, numpy and numba only.

Each module's docstring states its input contract and its formulas. Kernels return status codes
(`status.py`) with NaN where they cannot produce a number, and never raise in the hot loop: the risk
kernels are compiled with `error_model="numpy"`, so a division by zero gives inf / NaN (which they check)
instead of raising, and there is no per-division zero test in the generated code.

- special: normal, Student-t, incomplete beta / gamma, chi-square, binomial
- var: historical simulation (point, rolling), normal, Cornish-Fisher, horizons
- student_t: Student-t fitted by maximum likelihood
- fhs: EWMA and GARCH(1,1) filters, GARCH fit, filtered historical simulation
- evt: peaks over threshold, GPD tail by probability-weighted moments
- methods: every method at every level on one series (what the service and `qmp risk var` run)
- incremental: per-symbol state updated in place on every batch
- backtest: Kupiec, Christoffersen, Basel traffic light, Acerbi-Szekely Z2
- drawdown, vol: drawdowns and realized volatility
- stress: path drawdowns, GARCH-t-with-jumps Monte Carlo
- threads: column blocks of GIL-releasing kernels on a thread pool
- cache: the Numba cache folder, keyed by the kernels' sources
"""

from pathlib import Path

import numba

from qmp_kernels.cache import source_keyed_cache_dir

_default_cache_dir = numba.config.CACHE_DIR
# read when @njit(cache=True) decorates, so it must be set before the kernel modules load
numba.config.CACHE_DIR = source_keyed_cache_dir(Path(__file__).parent) or _default_cache_dir
try:
    from qmp_kernels import (
        backtest,
        drawdown,
        evt,
        fhs,
        incremental,
        methods,
        special,
        status,
        stress,
        student_t,
        threads,
        var,
        vol,
    )
finally:
    numba.config.CACHE_DIR = _default_cache_dir  # other libraries' kernels keep numba's default

__all__ = ["backtest", "drawdown", "evt", "fhs", "incremental", "methods", "special", "status", "stress", "student_t",
           "threads", "var", "vol"]
