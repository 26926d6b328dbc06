"""Rolling 99% historical VaR and ES: the numba kernel against pandas and numpy on the same data, one run.

Data: 1,000 symbols x 2,520 days of fat-tailed returns (Student-t, 4 degrees of freedom, seeded), window 250.
- qmp: `qmp_kernels.var.rolling_historical_var_es` (tail buffer, column blocks on threads), VaR
  and ES; also on one thread, for the per-core figure;
- pandas: `DataFrame.rolling(250).quantile(0.01, interpolation="lower")`, VaR only (pandas has no rolling ES);
- numpy: per symbol on a contiguous copy, `sliding_window_view` + `np.partition` at k, VaR and the mean of
  the k+1 smallest (ES): `qmp_lab.verify.numba_speed.numpy_var_es`, the fastest numpy formulation found.
Every competitor's VaR is checked equal to ours before any time is reported. Times are the best of
`--repeat` runs (first call of the kernel excluded: it loads the compiled code).

    .venv/bin/python tests/bench/bench_risk_rolling.py [--symbols 1000] [--days 2520] [--repeat 3] [--json]
"""

import argparse
import json
import math
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from qmp_kernels.threads import workers
from qmp_kernels.var import rolling_historical_var_es
from qmp_lab.verify.numba_speed import numpy_var_es

WINDOW = 250
ALPHA = 0.99


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def ours(x: np.ndarray, threads: int | None = None,
         out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    var, es, code = rolling_historical_var_es(x, WINDOW, ALPHA, threads=threads, out=out)
    assert code == 0
    return var, es


def with_pandas(x: np.ndarray) -> np.ndarray:
    return -pd.DataFrame(x).rolling(WINDOW).quantile(1 - ALPHA, interpolation="lower").to_numpy()


def with_numpy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return numpy_var_es(x, WINDOW, ALPHA)  # the fastest numpy formulation found (the verify test's baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--days", type=int, default=2520)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    x = np.random.default_rng(42).standard_t(4, size=(args.days, args.symbols)) * 0.01
    cells = x.size
    ours(x[: WINDOW + 10, :4])  # load the compiled kernel
    threads = workers()
    t_ours, (var, es) = best_of(args.repeat, lambda: ours(x))
    t_ours_1, _ = best_of(args.repeat, lambda: ours(x, threads=1))
    reused = (np.empty_like(x), np.empty_like(x))
    t_ours_out, _ = best_of(args.repeat, lambda: ours(x, out=reused))
    t_pandas, pandas_var = best_of(max(1, args.repeat - 1), lambda: with_pandas(x))
    t_numpy, (numpy_var, numpy_es) = best_of(1, lambda: with_numpy(x))
    np.testing.assert_array_equal(var, pandas_var)
    np.testing.assert_array_equal(var, numpy_var)
    np.testing.assert_allclose(es, numpy_es, rtol=1e-12)
    figures = {
        "symbols": args.symbols, "days": args.days, "window": WINDOW, "level": ALPHA, "threads": threads,
        "qmp_s": t_ours, "qmp_ns_per_cell": t_ours / cells * 1e9,
        "qmp_one_thread_s": t_ours_1, "qmp_one_thread_ns_per_cell": t_ours_1 / cells * 1e9,
        "pandas_var_only_s": t_pandas, "numpy_partition_s": t_numpy,
        "speedup_vs_pandas": t_pandas / t_ours, "speedup_vs_numpy": t_numpy / t_ours,
        "speedup_vs_pandas_one_thread": t_pandas / t_ours_1, "speedup_vs_numpy_one_thread": t_numpy / t_ours_1,
        "qmp_into_reused_outputs_s": t_ours_out, "speedup_vs_numpy_reused_outputs": t_numpy / t_ours_out,
        "results_equal": True,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"rolling {ALPHA:.0%} VaR+ES, {args.symbols} symbols x {args.days} days, window {WINDOW} "
          f"({cells:,} cells; results equal across all three)")
    print(f"  qmp kernel, {threads} threads : {t_ours * 1e3:8.1f} ms  {figures['qmp_ns_per_cell']:6.2f} ns/cell")
    print(f"  qmp kernel, 1 thread    : {t_ours_1 * 1e3:8.1f} ms  {figures['qmp_one_thread_ns_per_cell']:6.2f} ns/cell")
    print(f"  qmp kernel, {threads} threads, into reused outputs (out=): {t_ours_out * 1e3:.1f} ms")
    print(f"  pandas rolling quantile : {t_pandas * 1e3:8.1f} ms  (VaR only)  -> qmp is "
          f"{figures['speedup_vs_pandas']:.1f}x faster ({figures['speedup_vs_pandas_one_thread']:.1f}x on 1 thread)")
    print(f"  numpy partition         : {t_numpy * 1e3:8.1f} ms               -> qmp is "
          f"{figures['speedup_vs_numpy']:.1f}x faster ({figures['speedup_vs_numpy_one_thread']:.1f}x on 1 thread, "
          f"{figures['speedup_vs_numpy_reused_outputs']:.1f}x into reused outputs)")


if __name__ == "__main__":
    main()
