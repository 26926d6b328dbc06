"""The Dockerfile's build step that compiles the kernels into the image's Numba cache works: each service it
names compiles its kernels into an empty cache folder and exits 0 (a build that cannot compile fails)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def warm(service: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QMP_")} | {"NUMBA_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", f"qmp_{service}", "--warm-kernels"], env=env, capture_output=True,
                          text=True, timeout=900)


def test_dockerfile_when_read_then_it_warms_the_kernels_of_risk_and_execution_before_dropping_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    step = re.search(r"risk\|execution\) (\S+) -m \"qmp_\$SERVICE\" --warm-kernels", text)
    assert step is not None and step.group(1) == "/app/.venv/bin/python"
    assert text.index("--warm-kernels") < text.index("USER qmp")
    assert "NUMBA_CACHE_DIR=/var/cache/numba" in text


def test_warm_kernels_when_execution_is_built_then_its_kernels_compile_into_the_cache(tmp_path: Path) -> None:
    done = warm("execution", tmp_path / "numba")
    assert done.returncode == 0, done.stderr
    cached = {path.name.split(".")[1].rsplit("-", 1)[0] for path in (tmp_path / "numba").rglob("*.nbi")}
    assert {"participation_nb", "impact_cost_nb"} <= cached


def test_warm_kernels_when_risk_is_built_then_its_kernels_compile_into_the_cache(tmp_path: Path) -> None:
    done = warm("risk", tmp_path / "numba")
    assert done.returncode == 0, done.stderr
    cached = {path.name.split(".")[1].rsplit("-", 1)[0] for path in (tmp_path / "numba").rglob("*.nbi")}
    assert {"var_es_methods_nb", "historical_var_es_columns_nb", "backtest_nb"} <= cached
