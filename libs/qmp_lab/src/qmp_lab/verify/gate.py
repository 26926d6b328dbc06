"""The deployment gate: may this strategy start a phase? Only with a passing, current verification.

Each run of `qmp verify` merges its per-test results into `<home>/verify/<key>/latest.json` (key = the
import path made file-safe, `package.module-Class`), each stamped with the SHA-256 of the strategy's
source file at the time. `check_deployable` refuses when a required test is missing, its latest result
is not a pass, the source file changed since (the verification is older than the code it would run), or
`<home>/trading.lock` holds the strategy (a failed verification of a running strategy halted it). A
`--quick` smoke run is recorded but never opens the gate.

Call it from a deploy command before sending the deploy request:

    ok, reason = check_deployable("qmp_lab.strategies.vol_target:VolatilityTarget")  # or a strategy id
    if not ok:
        raise typer.Exit(...)  # print reason
"""

import json
import time
from pathlib import Path
from typing import Any

from qmp_lab.lock import LOCK_FILE, locked_strategies
from qmp_lab.verify.core import TestResult, dumps, source_hash, strategy_key, strategy_source_file

HOME = Path(".qmp")
TESTS = ("walk_forward", "fat_tail", "black_swan", "slippage", "numba")
REQUIRED_TESTS = TESTS


def record_dir(home: Path, path: str) -> Path:
    return home / "verify" / strategy_key(path)


def record_verification(home: Path, path: str, config: Any, strategy_id: str, results: list[TestResult],
                        report: Path | None, code_hash: str, quick: bool = False) -> Path:
    """Merge this run's results into latest.json (one entry per test: its latest result); return its path."""
    folder = record_dir(home, path)
    folder.mkdir(parents=True, exist_ok=True)
    latest_path = folder / "latest.json"
    latest = _read(latest_path) or {}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ids = set(latest.get("strategy_ids", []))
    if strategy_id:
        ids.add(strategy_id)
    tests = dict(latest.get("tests", {}))
    for result in results:
        tests[result.name] = {"status": result.status, "summary": result.summary, "source_hash": code_hash,
                              "quick": quick, "verified_at": now, "verified_at_ns": time.time_ns(),
                              "report": str(report) if report else ""}
    record = {"strategy": path, "config": config, "strategy_ids": sorted(ids),
              "source_file": str(strategy_source_file(path) or ""), "source_hash": code_hash,
              "updated_at": now, "passed": all(t["status"] == "pass" for t in tests.values()), "tests": tests}
    latest_path.write_text(dumps(record) + "\n")
    (folder / "runs").mkdir(exist_ok=True)
    (folder / "runs" / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**9}.json").write_text(
        dumps({"strategy": path, "strategy_id": strategy_id, "at": now, "source_hash": code_hash,
               "report": str(report) if report else "",
               "tests": {r.name: r.status for r in results}}) + "\n")
    return latest_path


def check_deployable(strategy_path: str, home: Path = HOME,
                     required: tuple[str, ...] = REQUIRED_TESTS) -> tuple[bool, str]:
    """Return (True, why) if the strategy's latest verification passed every required test on its current
    source and no trading lock holds it; else (False, the reason to show the operator).

    `strategy_path` is an import path `package.module:Class` or a strategy id that a verification
    recorded (`qmp verify ... --id <id>`, or verifying a running strategy by its id).
    """
    record = _find_record(home, strategy_path)
    if record is None:
        return False, (f"no verification of {strategy_path!r} under {home / 'verify'}: run "
                       f"`qmp verify {strategy_path}` first")
    path = record["strategy"]
    locked = locked_strategies(home)
    for name in {path, strategy_path, *record.get("strategy_ids", []), "ALL"} & set(locked):
        return False, (f"{home / LOCK_FILE} holds {name!r}: {locked[name].get('reason', '')} (after review: "
                       f"`qmp unlock {name} --reason ...`)")
    current = source_hash(path)
    if not current:
        return False, f"cannot find the source file of {path!r} to compare with its verification"
    tests = record.get("tests", {})
    missing = [name for name in required if name not in tests]
    if missing:
        return False, f"verification of {path} lacks {', '.join(missing)}: run `qmp verify {path}`"
    for name in required:
        entry = tests[name]
        if entry.get("status") != "pass":
            return False, (f"latest {name} verification of {path} is {entry.get('status')} "
                           f"({entry.get('verified_at')}): {entry.get('summary', '')}")
        if entry.get("quick"):
            return False, (f"the latest {name} verification of {path} was a --quick smoke run "
                           f"({entry.get('verified_at')}): run the full `qmp verify {path}`")
        if entry.get("source_hash") != current:
            return False, (f"{name} was verified on {entry.get('verified_at')} against source sha256 "
                           f"{str(entry.get('source_hash'))[:12]}…, but {record.get('source_file')} is now "
                           f"{current[:12]}…: the verification is older than the code; run `qmp verify {path}`")
    return True, f"{path}: {len(required)} tests passed on the current source ({current[:12]}…)"




def latest_verification(strategy: str, home: Path = HOME) -> dict[str, Any] | None:
    """The strategy's latest verification record (each test's latest result), by import path or id; None if
    it was never verified here."""
    return _find_record(home, strategy)


def _find_record(home: Path, strategy: str) -> dict[str, Any] | None:
    if ":" in strategy:
        return _read(record_dir(home, strategy) / "latest.json")
    newest: dict[str, Any] | None = None
    for candidate in sorted((home / "verify").glob("*/latest.json")):
        record = _read(candidate)
        if record and strategy in record.get("strategy_ids", []) and (
                newest is None or record.get("updated_at", "") > newest.get("updated_at", "")):
            newest = record
    return newest


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
