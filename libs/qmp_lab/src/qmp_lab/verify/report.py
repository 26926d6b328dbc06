"""The verification report: `report.md` (for people), `report.json` (for pipelines), one PNG per test."""

from pathlib import Path
from typing import Any

from qmp_lab.verify.core import Check, Table, TestResult, dumps

MARKS = {True: "✅", False: "❌", None: "ℹ️"}
STATUS_MARKS = {"pass": "✅ pass", "fail": "❌ FAIL", "error": "⚠️ ERROR", "skipped": "➖ skipped"}


def pyplot() -> Any:
    """Return matplotlib.pyplot on the file-only Agg backend (no display on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(folder: Path, header: dict[str, Any], results: list[TestResult]) -> Path:
    """Write report.md and report.json into folder (the charts are already there); return report.md."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(dumps(header | {"tests": [r.to_json() for r in results]}) + "\n")
    lines = [f"# QMP verification: {header['strategy']}", ""]
    lines += [f"- verdict: **{'PASS' if header['passed'] else 'FAIL'}** (exit code {header['exit_code']})",
              f"- strategy: `{header['strategy']}`" + (f" (id `{header['strategy_id']}`)" if header.get("strategy_id")
                                                        else ""),
              f"- config: `{header.get('config') or {}}`",
              f"- source: `{header.get('source_file')}` sha256 `{header.get('source_hash', '')[:16]}…`",
              f"- started {header['started']}, finished {header['finished']}", ""]
    lines += ["| test | status | seconds | summary |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {STATUS_MARKS[r.status]} | {r.seconds:.1f} | {_cell(r.summary)} |" for r in results]
    for result in results:
        lines += ["", f"## {result.name}: {STATUS_MARKS[result.status]}", "", result.summary, ""]
        lines += [_check_line(check) for check in result.checks]
        for table in result.tables:
            lines += ["", *markdown_table(table)]
        for chart in result.charts:
            lines += ["", f"![{result.name}]({chart})"]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def markdown_table(table: Table) -> list[str]:
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    return lines


def _check_line(check: Check) -> str:
    return f"- {MARKS[check.passed]} **{check.name}**: {check.detail}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value).replace("|", "\\|").replace("\n", " ")
