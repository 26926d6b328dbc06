"""A warm spare imports its service, then runs it only on the word `go`; anything else ends it."""

import subprocess
import sys
from pathlib import Path


def spare(package_root: Path, name: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "qmp_core.warm_spare", name], input=stdin, capture_output=True,
                          timeout=60, check=False, env={"PYTHONPATH": str(package_root), "PATH": "/usr/bin:/bin"})


def service_package(root: Path) -> Path:
    package = root / "qmp_sparecore"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        f"import pathlib\npathlib.Path({str(root / 'imported')!r}).touch()\n"
        f"def main():\n    pathlib.Path({str(root / 'ran')!r}).touch()\n"
    )
    return root


def test_warm_spare_when_told_go_then_runs_the_service_main(tmp_path: Path) -> None:
    done = spare(service_package(tmp_path), "qmp_sparecore", b"go\n")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "imported").exists() and (tmp_path / "ran").exists()


def test_warm_spare_when_input_ends_or_says_anything_else_then_ends_without_running(tmp_path: Path) -> None:
    root = service_package(tmp_path)
    for stdin in (b"", b"gone\n"):
        done = spare(root, "qmp_sparecore", stdin)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "imported").exists() and not (tmp_path / "ran").exists()


def test_warm_spare_when_not_given_a_qmp_service_then_refuses(tmp_path: Path) -> None:
    done = spare(tmp_path, "os", b"go\n")
    assert done.returncode != 0 and b"usage" in done.stderr
