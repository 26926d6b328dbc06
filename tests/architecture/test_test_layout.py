"""Tests mirror the modules: every test file of a package is named after the module it tests, so the tests
of a module are found in one obvious file (and a module without one stands out)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# tests directory → (the package's source, the prefix its test files carry after "test_")
PACKAGES = {
    "libs/qmp_core/tests": ("libs/qmp_core/src/qmp_core", "core"),
    "libs/qmp_kernels/tests": ("libs/qmp_kernels/src/qmp_kernels", "kernel"),
    "libs/qmp_lab/tests": ("libs/qmp_lab/src/qmp_lab", ""),
    "libs/qmp_ops/tests": ("libs/qmp_ops/src/qmp_ops", ""),
    "libs/qmp_venues/tests": ("libs/qmp_venues/src/qmp_venues", "venues"),
    **{f"services/{name}/tests": (f"services/{name}/src/qmp_{name}", name)
       for name in ("collector", "risk", "execution", "deployer")},
}


def module_names(source: Path) -> set[str]:
    """Every name a test file may start with: a module's path with "_" for "/", its own name, a package."""
    names: set[str] = set()
    for path in source.rglob("*.py"):
        parts = path.relative_to(source).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
            if not parts:
                continue
        names.add("_".join(parts))
        names.add(parts[-1].lstrip("_"))
    return names


def misnamed(tests: Path, source: Path, prefix: str) -> list[str]:
    names = module_names(source)
    wrong = []
    for test in sorted(tests.glob("test_*.py")):
        rest = test.stem.removeprefix("test_")
        if prefix:
            if not rest.startswith(prefix + "_"):
                wrong.append(f"{test.name}: not test_{prefix}_<module>")
                continue
            rest = rest.removeprefix(prefix + "_")
        if not any(rest == name or rest.startswith(name + "_") for name in names):
            wrong.append(f"{test.name}: names no module of {source.name}")
    return wrong


@pytest.mark.parametrize("tests", sorted(PACKAGES))
def test_test_files_when_listed_then_each_named_after_a_module_of_its_package(tests: str) -> None:
    source, prefix = PACKAGES[tests]

    assert misnamed(ROOT / tests, ROOT / source, prefix) == []


def test_misnamed_when_a_file_names_no_module_then_reported(tmp_path: Path) -> None:
    source, tests = tmp_path / "src", tmp_path / "tests"
    (source / "engine").mkdir(parents=True)
    tests.mkdir()
    for name in ("engine/__init__.py", "engine/host.py", "app.py"):
        (source / name).write_text("")
    for name in ("test_x_host.py", "test_x_engine_host.py", "test_x_app_fuzz.py", "test_x_orders.py", "test_app.py"):
        (tests / name).write_text("")

    assert misnamed(tests, source, "x") == ["test_app.py: not test_x_<module>",
                                             "test_x_orders.py: names no module of src"]


def test_test_files_when_listed_across_the_repository_then_no_two_share_a_file_name() -> None:
    # pytest imports test modules by their file name (rootdir import mode): two of a name stop collection.
    files = [path for top in ("libs", "services", "tests") for path in (ROOT / top).rglob("test_*.py")
             if ".venv" not in path.parts]
    names: dict[str, list[str]] = {}
    for path in files:
        names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}
