"""Where the kernels' Numba cache lives: a folder keyed by a digest of their sources."""

import hashlib
import os
from pathlib import Path


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
