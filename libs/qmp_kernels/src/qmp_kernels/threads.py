"""Run a GIL-releasing kernel over column blocks on a small thread pool.

Kernels that take a [first, last) block and are compiled with `nogil=True` run truly in parallel from
Python threads. That costs a few microseconds per block and, unlike numba's `parallel=True`, adds nothing
to compile time (a parfor kernel takes seconds more to compile, a cost every fresh cache pays).
"""

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None


def workers() -> int:
    """Return the number of threads blocks are spread over (the machine's cores)."""
    return max(os.cpu_count() or 1, 1)


def blocks(count: int, min_block: int, parts: int | None = None) -> list[tuple[int, int]]:
    """Split range(count) into at most `parts` (default: workers) contiguous blocks of >= min_block items."""
    if count <= 0:
        return [(0, 0)]
    parts = workers() if parts is None else parts
    n = max(1, min(parts, count // max(min_block, 1)))
    size = -(-count // n)
    return [(first, min(count, first + size)) for first in range(0, count, size)] or [(0, 0)]


def run_blocks(kernel: Callable[[int, int], int], spans: list[tuple[int, int]]) -> list[int]:
    """Call kernel(first, last) for every block, the first on this thread and the rest on the pool."""
    global _pool
    if len(spans) == 1:
        return [kernel(*spans[0])]
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="qmp-kernel")
    futures = [_pool.submit(kernel, first, last) for first, last in spans[1:]]
    codes = [kernel(*spans[0])]
    return codes + [future.result() for future in futures]
