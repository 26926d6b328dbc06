"""The research side's independent pieces of work (walk-forward folds and splits, parameter sets) run in this
process or as Ray tasks, with the same code and the same numbers either way.

`run_tasks(fn, shared, items, workers)` returns `[fn(shared, item) for item in items]`, in the items' order:
- `Workers()` (one worker, no address): in this process, one after the other, as before Ray;
- `Workers(count=N)`: a Ray instance on this machine with N CPUs, started for the first call and kept for the
  next ones (Ray's own start costs seconds), `shared` put once into its object store for every task;
- `Workers(address="auto" | "ray://host:10001")`: an existing Ray cluster, whose machines must have QMP and the
  strategy's package installed (a strategy found through an extra import path names it: `pythonpath`).
Every piece runs with BLAS on one thread (`one_blas_thread`), here and on every worker, so where it ran never
moves a bit of its result. A piece that raises is run once more; failing again, the run stops with `TaskFailed`
naming it and why, so a result is never silently missing. `progress(done, total)` is called as results come back.

Ray is an optional extra (`qmp-lab[ray]`): only `Workers` beyond this process import it.
"""

import os
import reprlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

ATTEMPTS = 2  # a piece is retried once

# Ray, in a process that `uv run` started (as `./dev` starts every command), starts each worker through
# `uv run` too, and those workers die at start here; the workers use this interpreter and this process's
# import path instead (the runtime environment below). Read by Ray when it is imported: set before.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@dataclass(frozen=True)
class Workers:
    count: int = 1  # processes: 1 is this one
    address: str = ""  # an existing Ray cluster; "" for this machine
    pythonpath: str = ""  # extra import path the workers need (a strategy outside the installed packages)

    @property
    def uses_ray(self) -> bool:
        return self.count > 1 or bool(self.address)

    def describe(self) -> str:
        if self.address:
            return f"the Ray cluster at {self.address}"
        return f"{self.count} Ray workers on this machine" if self.count > 1 else "this process"


IN_PROCESS = Workers()


class TaskFailed(RuntimeError):
    """A piece of the work failed on each of its attempts."""

    def __init__(self, index: int, item: Any, cause: str) -> None:
        super().__init__(f"piece {index + 1} ({reprlib.repr(item)}) failed twice: {cause}")
        self.index, self.item, self.cause = index, item, cause


def run_tasks(fn: Callable[[S, T], R], shared: S, items: Sequence[T], workers: Workers = IN_PROCESS,
              progress: Callable[[int, int], None] | None = None) -> list[R]:
    """Return fn(shared, item) for each item, in order, where `workers` says; raise TaskFailed."""
    tick = progress or (lambda done, total: None)
    if not workers.uses_ray:
        results = []
        for index, item in enumerate(items):
            results.append(_attempt(fn, shared, item, index))
            tick(index + 1, len(items))
        return results
    return _on_ray(fn, shared, items, workers, tick)


def one_blas_thread(fn: Callable[[S, T], R], shared: S, item: T) -> R:
    """fn(shared, item) with BLAS on one thread: a multi-threaded BLAS splits a product's sums by its thread
    count (e.g. XᵀX in a ridge fit), which moves the last bits of a result; one thread everywhere (this process,
    any worker) gives the same numbers wherever the piece runs."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return fn(shared, item)


def _attempt(fn: Callable[[S, T], R], shared: S, item: T, index: int) -> R:
    for attempt in range(ATTEMPTS):
        try:
            return one_blas_thread(fn, shared, item)
        except Exception as error:  # research code may raise anything: once more, then it is reported
            if attempt == ATTEMPTS - 1:
                raise TaskFailed(index, item, f"{type(error).__name__}: {error}") from error
    raise AssertionError("unreachable")


def _on_ray(fn: Callable[[S, T], R], shared: S, items: Sequence[T], workers: Workers,
            tick: Callable[[int, int], None]) -> list[R]:
    try:
        import ray
    except ImportError as error:
        raise RuntimeError("running on Ray needs the ray extra: pip install 'qmp-lab[ray]'") from error
    if not ray.is_initialized():
        # Workers import what this process imports: its own path, and the strategy's extra one.
        path = os.pathsep.join(p for p in [workers.pythonpath, *sys.path] if p)
        runtime = {"env_vars": {"PYTHONPATH": path}}
        if workers.address:
            ray.init(address=workers.address, runtime_env=runtime, log_to_driver=False)
        else:
            ray.init(num_cpus=workers.count, include_dashboard=False, log_to_driver=False, runtime_env=runtime)
    remote = ray.remote(max_retries=ATTEMPTS - 1, retry_exceptions=True)(one_blas_thread)
    stored = ray.put(shared)
    pending = {remote.remote(fn, stored, item): index for index, item in enumerate(items)}
    results: dict[int, R] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            index = pending.pop(ref)
            try:
                results[index] = ray.get(ref)
            except ray.exceptions.RayError as error:
                for other in pending:
                    ray.cancel(other)
                cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
                raise TaskFailed(index, items[index], f"{type(cause).__name__}: {cause}") from None
            tick(len(results), len(items))
    return [results[index] for index in range(len(items))]
