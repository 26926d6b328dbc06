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
- impact: the market-impact (slippage) model and its fit
- cache: the Numba cache folder, keyed by the kernels' sources, and the `njit` every module decorates with

A module is imported when first asked for (`from qmp_kernels import var`, or `qmp_kernels.var`), not with the
package.
"""

import importlib
from types import ModuleType

__all__ = ["backtest", "drawdown", "evt", "fhs", "impact", "incremental", "methods", "special", "status", "stress",
           "student_t", "threads", "var", "vol"]


def __getattr__(name: str) -> ModuleType:
    """Import a kernel module when it is first asked for: a service loads (and keeps in memory) only the
    kernels it runs; execution's slippage needs `impact`, not the risk models."""
    if name in __all__:
        return importlib.import_module(f"qmp_kernels.{name}")
    raise AttributeError(f"module 'qmp_kernels' has no attribute {name!r}")
