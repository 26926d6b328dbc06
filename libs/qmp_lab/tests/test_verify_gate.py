"""The deployment gate: stale, failed or locked verifications stop a deploy."""

from pathlib import Path

import pytest

from qmp_lab.verify.core import TestResult
from qmp_lab.verify.gate import TESTS, check_deployable, record_verification
from qmp_lab.verify.runner import EXIT_ERROR, EXIT_FAIL, EXIT_PASS, exit_code, resolve_tests

STRATEGY_SOURCE = '''
import pandas as pd
from qmp_core.strategy import BaseStrategy


class Flat(BaseStrategy):
    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        return prices * 0.0
'''


@pytest.fixture
def strategy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique_id: str) -> tuple[str, Path]:
    name = f"gate_strategy_{unique_id}"
    source = tmp_path / f"{name}.py"
    source.write_text(STRATEGY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:Flat", source


def results(status: str = "pass", failing: str = "") -> list[TestResult]:
    return [TestResult(name=name, status="fail" if name == failing else status, summary="s") for name in TESTS]


def record(home: Path, path: str, outcome: list[TestResult], strategy_id: str = "") -> None:
    from qmp_lab.verify.core import source_hash

    record_verification(home, path, {}, strategy_id, outcome, None, source_hash(path))


def test_check_deployable_when_every_test_passed_on_current_source_then_ok(tmp_path, strategy_module):
    path, _ = strategy_module
    record(tmp_path, path, results(), strategy_id="flat1")

    assert check_deployable(path, home=tmp_path)[0] is True
    assert check_deployable("flat1", home=tmp_path)[0] is True


def test_check_deployable_when_never_verified_then_refused(tmp_path, strategy_module):
    ok, reason = check_deployable(strategy_module[0], home=tmp_path)

    assert ok is False
    assert "qmp verify" in reason


def test_check_deployable_when_latest_run_failed_a_test_then_refused_naming_it(tmp_path, strategy_module):
    path, _ = strategy_module
    record(tmp_path, path, results())
    record(tmp_path, path, [TestResult(name="fat_tail", status="fail", summary="too many exceptions")])

    ok, reason = check_deployable(path, home=tmp_path)

    assert ok is False
    assert "fat_tail" in reason and "fail" in reason


def test_check_deployable_when_source_changed_after_verification_then_refused_as_older(tmp_path, strategy_module):
    path, source = strategy_module
    record(tmp_path, path, results())
    source.write_text(STRATEGY_SOURCE + "\n# changed\n")

    ok, reason = check_deployable(path, home=tmp_path)

    assert ok is False
    assert "older than the code" in reason


def test_check_deployable_when_latest_runs_were_quick_then_refused(tmp_path, strategy_module):
    from qmp_lab.verify.core import source_hash

    path, _ = strategy_module
    record_verification(tmp_path, path, {}, "", results(), None, source_hash(path), quick=True)

    ok, reason = check_deployable(path, home=tmp_path)

    assert ok is False
    assert "--quick" in reason


def test_check_deployable_when_test_missing_then_refused(tmp_path, strategy_module):
    path, _ = strategy_module
    record(tmp_path, path, [TestResult(name="walk_forward", status="pass", summary="")])

    ok, reason = check_deployable(path, home=tmp_path)

    assert ok is False
    assert "lacks" in reason


def test_exit_code_when_results_mixed_then_fail_beats_error_beats_pass():
    assert exit_code(results()) == EXIT_PASS
    assert exit_code(results(failing="numba")) == EXIT_FAIL
    assert exit_code([*results(), TestResult(name="x", status="error", summary="")]) == EXIT_ERROR
    assert resolve_tests(["numba", "walk_forward"]) == ["walk_forward", "numba"]
    with pytest.raises(ValueError, match="unknown test"):
        resolve_tests(["speed"])
