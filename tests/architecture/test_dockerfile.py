"""The Dockerfile's steps replayed without a Docker engine: its install step, as written, into a fresh virtual
environment per service; the service starts from it (reads its settings), and the build step that compiles
the kernels into the image's Numba cache works there (a build that cannot compile them fails)."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES = ("collector", "risk", "execution", "deployer")
KERNELS = {"risk": {"var_es_methods_nb", "historical_var_es_columns_nb", "backtest_nb"},
           "execution": {"participation_nb", "impact_cost_nb"}}


def install_command(service: str) -> list[str]:
    """The Dockerfile's last `uv sync` (the workspace installed), with its build arguments filled in."""
    line = [step for step in re.findall(r"^RUN (uv sync .*)$", DOCKERFILE, flags=re.MULTILINE)][-1]
    line = re.sub(r"\$\(for p in \$WITH_PACKAGES;[^)]*\)", "", line).replace("$SERVICE", service)
    return shlex.split(line)


def uv() -> str:
    found = ROOT / ".venv-tools" / "bin" / "uv"
    return str(found) if found.exists() else (shutil.which("uv") or pytest.skip("no uv: `./dev` installs it"))


def test_dockerfile_when_read_then_it_warms_the_kernels_of_risk_and_execution_before_dropping_root() -> None:
    step = re.search(r"risk\|execution\) (\S+) -m \"qmp_\$SERVICE\" --warm-kernels", DOCKERFILE)
    assert step is not None and step.group(1) == "/app/.venv/bin/python"
    assert DOCKERFILE.index("--warm-kernels") < DOCKERFILE.index("USER qmp")
    assert "NUMBA_CACHE_DIR=/var/cache/numba" in DOCKERFILE
    assert install_command("risk")[:4] == ["uv", "sync", "--no-dev", "--package"]


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_when_its_install_is_replayed_then_the_service_starts_and_its_kernels_compile(
        service: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QMP_", "VIRTUAL_ENV"))}
    venv, cache = tmp_path / "venv", tmp_path / "numba"
    command = [uv(), *install_command(service)[1:], "--quiet"]
    installed = subprocess.run(command, cwd=ROOT, env=env | {"UV_PROJECT_ENVIRONMENT": str(venv)},
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    python = str(venv / "bin" / "python")
    started = subprocess.run([python, "-m", f"qmp_{service}", "--settings"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 0 and f'"settings_type":"{service.capitalize()}' in started.stdout.replace(" ", ""), \
        started.stderr
    # only what the service runs: no CLI, embedded servers or lab in its image
    assert subprocess.run([python, "-c", "import qmp_ops"], capture_output=True, env=env).returncode != 0
    if service in KERNELS:
        warmed = subprocess.run([python, "-m", f"qmp_{service}", "--warm-kernels"], capture_output=True, text=True,
                                env=env | {"NUMBA_CACHE_DIR": str(cache)}, timeout=900)
        assert warmed.returncode == 0, warmed.stderr
        cached = {path.name.split(".")[1].rsplit("-", 1)[0] for path in cache.rglob("*.nbi")}
        assert KERNELS[service] <= cached
