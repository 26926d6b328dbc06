"""Run verification tests on a strategy, write the report, record the result for the deployment gate.

Exit codes for pipelines: 0 every test passed; 1 a test failed; 3 a test could not be carried out (error)
and none failed. A skipped test does not fail the run but leaves the gate closed (it records no pass).
"""

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qmp_lab.parallel import IN_PROCESS, Workers
from qmp_lab.verify.core import StackReplay, StrategyTarget, TestResult, VerifyContext, timed
from qmp_lab.verify.gate import TESTS, record_verification
from qmp_lab.verify.report import write_report

MODULES = {
    "walk_forward": "qmp_lab.verify.walk_forward",
    "fat_tail": "qmp_lab.verify.fat_tail",
    "black_swan": "qmp_lab.verify.black_swan",
    "slippage": "qmp_lab.verify.slippage",
    "numba": "qmp_lab.verify.numba_speed",
}
EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_ERROR = 3
# Tests of the installation (kernel speed), not of the strategy: their failure is reported and blocks a
# deploy, but never halts a strategy that is trading.
INSTALLATION_TESTS = frozenset({"numba"})


@dataclass
class VerifyRun:
    target: StrategyTarget
    results: list[TestResult]
    started: str
    finished: str
    report: Path
    record: Path | None = None
    source_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.status in ("pass", "skipped") for r in self.results)

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)


def halting_failures(results: Sequence[TestResult]) -> list[str]:
    """Return the failed or errored tests that halt a running strategy (every one but the installation's)."""
    return [r.name for r in results if r.status in ("fail", "error") and r.name not in INSTALLATION_TESTS]


def exit_code(results: Sequence[TestResult]) -> int:
    statuses = {r.status for r in results}
    if "fail" in statuses:
        return EXIT_FAIL
    if "error" in statuses:
        return EXIT_ERROR
    return EXIT_PASS


def resolve_tests(names: Sequence[str] | None) -> list[str]:
    """Return the tests to run in suite order; ValueError naming the known ones for an unknown name."""
    if not names:
        return list(TESTS)
    unknown = sorted(set(names) - set(TESTS))
    if unknown:
        raise ValueError(f"unknown test(s) {unknown}; expected some of {', '.join(TESTS)}")
    return [name for name in TESTS if name in names]


def run_verification(target: StrategyTarget, tests: Sequence[str] | None = None, reports: Path = Path("reports"),
                     home: Path = Path(".qmp"), options: dict[str, Any] | None = None, quick: bool = False,
                     log: Callable[[str], None] = lambda message: None,
                     on_result: Callable[[TestResult], None] = lambda result: None, record: bool = True,
                     stack_replay: StackReplay | None = None, workers: Workers = IN_PROCESS) -> VerifyRun:
    """Run the named tests (all by default) in order; write the report; record it for the gate. A test's
    independent pieces (walk_forward's folds and configurations) run where `workers` says."""
    names = resolve_tests(tests)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    folder = reports / f"verify-{target.key}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    code_hash = target.source_hash()
    ctx = VerifyContext(target=target, out_dir=folder, options=dict(options or {}), quick=quick, home=home, log=log,
                        stack_replay=stack_replay, workers=workers)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: list[TestResult] = []
    for name in names:
        log(f"running {name}…")
        module = importlib.import_module(MODULES[name])
        result = timed(module.run, ctx, name)
        results.append(result)
        on_result(result)
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    header = {"strategy": target.path, "strategy_id": target.strategy_id, "config": dict(target.config or {}),
              "source_file": str(target.source_file() or ""), "source_hash": code_hash, "started": started,
              "finished": finished, "passed": exit_code(results) == EXIT_PASS, "exit_code": exit_code(results),
              "tests_run": names}
    report = write_report(folder, header, results)
    run = VerifyRun(target, results, started, finished, report, source_hash=code_hash)
    if record:
        run.record = record_verification(home, target.path, dict(target.config or {}), target.strategy_id, results,
                                         report, code_hash, quick=quick)
    return run
