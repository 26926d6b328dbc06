"""Where the kernels' Numba cache lives: a folder keyed by a digest of their sources; `njit` puts them there."""

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@functools.cache
def kernels_cache_dir() -> str | None:
    """The kernels' cache folder (None: numba's default), computed once per process."""
    return source_keyed_cache_dir(Path(__file__).parent)


@contextlib.contextmanager
def _kernels_cache() -> Iterator[None]:
    default = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = kernels_cache_dir() or default  # read when a cached function is decorated
    try:
        yield
    finally:
        numba.config.CACHE_DIR = default  # other libraries' kernels keep numba's default


def njit(*args: Any, **options: Any) -> Any:
    """`numba.njit`, caching in the kernels' folder: each kernel module decorates with this one.

    The folder is in force only while a function is decorated (and, with a signature, compiled or loaded),
    so a module can be imported on its own, when first needed, and still find its cache.
    """
    if len(args) == 1 and callable(args[0]) and not options:
        with _kernels_cache():
            return numba.njit(args[0])
    decorate = numba.njit(*args, **options)

    def apply(function: Callable[..., Any]) -> Any:
        with _kernels_cache():
            return decorate(function)

    return apply
