"""The chaos suite's two sizes, and its table of figures at the end of a run.

Tests marked `chaos_all` run only with `QMP_CHAOS=all` (the whole suite); the default run keeps the quick
subset the issue asks `.ci/run` for. Each scenario records its figures (`report` in test_chaos.py), and the
run ends with one table of them.
"""

import os

import pytest
from _pytest.terminal import TerminalReporter

COLUMNS = ("fault", "days", "fills", "recovery_s", "restarts", "dead_letters", "counted")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("QMP_CHAOS") == "all":
        return
    skip = pytest.mark.skip(reason="whole chaos suite only: QMP_CHAOS=all ./dev test tests/chaos")
    for item in items:
        if item.get_closest_marker("chaos_all") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    rows = []
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "") != "call":
                continue
            for name, row in getattr(report, "user_properties", []):
                if name == "chaos":
                    rows.append((outcome, row))
    if not rows:
        return
    terminalreporter.section("chaos suite: each fault against the undisturbed run")
    header = ("result", *COLUMNS)
    table = [header, *[(outcome, *(str(row[column]) for column in COLUMNS)) for outcome, row in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        terminalreporter.write_line("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
