"""Compile cost of the risk kernels: first call in a fresh process, numba cache warm, against a second call.

Each measurement is a new Python process that imports numpy and numba (timed apart: the framework), then
the kernels (numba's one-time setup and the kernels with an explicit signature load here), and times its
first call of:
`var_es_methods_nb` (all seven methods, what each portfolio snapshot runs), the rolling historical
kernel, and the per-symbol incremental update (with its setup). A first round of processes warms the
numba cache (and Python's bytecode cache); the figures are the median of `--runs` processes after it.
Baseline, in the same processes: the second call of the same kernel (no loading at all).

`--no-scipy` hides scipy from the child processes, as in production (scipy is a test-only dependency, and
numba imports it on its first call when it is installed, to look for BLAS).

    .venv/bin/python tests/bench/bench_risk_compile.py [--runs 5] [--no-scipy] [--json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
if "--no-scipy" in sys.argv:
    sys.modules["scipy"] = None
started = time.perf_counter()
import numpy as np
import numba
framework = time.perf_counter()
from qmp_kernels.methods import all_methods, var_es_methods_nb
from qmp_kernels.var import rolling_historical_var_es
from qmp_risk.engine.symbols import SymbolParams, SymbolRisk
imported = time.perf_counter()
x = np.random.default_rng(1).normal(0.0, 0.01, 300)
alphas = np.array([0.95, 0.975, 0.99])
out = {"numpy_numba_import_s": framework - started, "kernels_load_s": imported - framework}
def timed(name, call):
    start = time.perf_counter(); call(); first = time.perf_counter() - start
    start = time.perf_counter(); call(); out[name] = {"first_s": first, "second_s": time.perf_counter() - start}
timed("var_es_methods_nb", lambda: var_es_methods_nb(x, 250, alphas, 0.94, 0.9, np.full(3, np.nan), all_methods()))
timed("rolling_historical_var_es", lambda: rolling_historical_var_es(x.reshape(-1, 3), 50, 0.99))
risk = SymbolRisk(SymbolParams(250, (0.95, 0.975, 0.99), 0.94, 0.9, 10, 20, 20, 1))
cols = risk.columns(["A", "B", "C"])
timed("symbol_update", lambda: risk.update(cols, np.array([0.01, -0.02, 0.003])))
print(json.dumps(out))
"""


def run_child(no_scipy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    args = [sys.executable, "-c", CHILD] + (["--no-scipy"] if no_scipy else [])
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-scipy", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    run_child(args.no_scipy)  # warm the numba and bytecode caches
    runs = [run_child(args.no_scipy) for _ in range(args.runs)]
    figures: dict = {"runs": args.runs, "scipy_hidden": args.no_scipy,
                     "numpy_numba_import_s": statistics.median(r["numpy_numba_import_s"] for r in runs),
                     "kernels_load_s": statistics.median(r["kernels_load_s"] for r in runs)}
    for name in ("var_es_methods_nb", "rolling_historical_var_es", "symbol_update"):
        first = statistics.median(r[name]["first_s"] for r in runs)
        second = statistics.median(r[name]["second_s"] for r in runs)
        figures[name] = {"first_call_s": first, "second_call_s": second, "first_over_second": first / second}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"first call in a fresh process, cache warm (median of {args.runs} processes"
          f"{', scipy hidden' if args.no_scipy else ''})")
    print(f"  import numpy + numba      : {figures['numpy_numba_import_s'] * 1e3:7.1f} ms (the framework, not ours)")
    print(f"  import + load qmp kernels : {figures['kernels_load_s'] * 1e3:7.1f} ms (numba's first-use setup, cached "
          f"eager kernels)")
    for name in ("var_es_methods_nb", "rolling_historical_var_es", "symbol_update"):
        f = figures[name]
        print(f"  {name:26s}: first {f['first_call_s'] * 1e3:7.1f} ms, second {f['second_call_s'] * 1e3:7.2f} ms "
              f"({f['first_over_second']:.0f}x)")


if __name__ == "__main__":
    main()
