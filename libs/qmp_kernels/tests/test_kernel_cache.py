"""The kernels' Numba cache folder is keyed by their sources, so an edited callee never runs stale code."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import qmp_kernels as kernels
from qmp_kernels.cache import source_keyed_cache_dir


def test_cache_dir_when_a_source_changes_then_the_folder_changes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    (tmp_path / "callee.py").write_text("X = 1\n")
    (tmp_path / "caller.py").write_text("from callee import X\n")
    first = source_keyed_cache_dir(tmp_path)
    assert first is not None and Path(first).is_dir() and Path(first).parent == tmp_path / "__pycache__"
    assert source_keyed_cache_dir(tmp_path) == first  # same sources, same folder: the cache is reused
    (tmp_path / "callee.py").write_text("X = 2\n")
    assert source_keyed_cache_dir(tmp_path) not in (None, first)


def test_cache_dir_when_numba_cache_dir_is_set_then_numba_keeps_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "explicit"))
    assert source_keyed_cache_dir(tmp_path) is None


def test_kernels_when_imported_then_cached_in_the_source_keyed_folder_and_numba_default_restored() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    code = ("import numba, qmp_kernels.methods as m; "
            "print(m.var_es_methods_nb._cache._cache_path); print(repr(numba.config.CACHE_DIR))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    cache_path, default = out.stdout.splitlines()
    expected = source_keyed_cache_dir(Path(kernels.__file__).parent)
    assert expected is not None and cache_path.startswith(expected)
    assert default == "''"  # other libraries' kernels keep numba's own default


def test_kernels_when_one_module_is_asked_for_then_only_it_loads_and_it_caches_in_the_kernels_folder() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    code = ("import sys, numba; from qmp_kernels import impact; "
            "print(sorted(m for m in sys.modules if m.startswith('qmp_kernels.'))); "
            "print(impact.impact_cost_nb._cache._cache_path); print(repr(numba.config.CACHE_DIR))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    loaded, cache_path, default = out.stdout.splitlines()
    assert loaded == "['qmp_kernels.cache', 'qmp_kernels.impact', 'qmp_kernels.status']"  # not the risk models
    expected = source_keyed_cache_dir(Path(kernels.__file__).parent)
    assert expected is not None and cache_path.startswith(expected) and default == "''"
