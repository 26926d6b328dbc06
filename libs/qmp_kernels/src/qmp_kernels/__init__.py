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
"""

import hashlib
import os
from pathlib import Path

import numba


def source_keyed_cache_dir(here: Path) -> str | None:
    """Return a cache folder named by a digest of every source in `here`, or None to keep numba's default.

    Numba validates a cached function against its own file's timestamp only, not its callees' files: after
    an edit (or an upgrade) of `student_t.py`, `methods.py`'s cache would still hold code compiled with the
    old Student-t fit, a silently wrong number. A folder per source digest makes any change recompile.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):  # an explicit choice (the numba test's fresh processes) wins
        return None
    digest = hashlib.sha256()
    for source in sorted(here.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    folder = here / "__pycache__" / f"numba-{digest.hexdigest()[:16]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only install: numba falls back to its per-user cache
        return None
    return str(folder) if os.access(folder, os.W_OK) else None


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
