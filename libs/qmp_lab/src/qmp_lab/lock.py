"""The trading lock: `<home>/trading.lock`, strategies a failed verification stopped until a person says so.

The emergency protocol (`qmp verify` on a running strategy that fails) writes an entry; while it is there
the deploy gate refuses the strategy and `qmp resume` refuses to lift its halt. Only `qmp unlock
<strategy> --reason ...` removes it, and every lock and unlock is appended to `<home>/trading.lock.log`
(JSON lines) beside it, so the file's history survives the file. `ALL` locks every strategy.

Plain JSON and no heavy imports: the operator's fast verbs read it.
"""

import getpass
import json
import time
from pathlib import Path
from typing import Any

LOCK_FILE = "trading.lock"
LOCK_LOG = "trading.lock.log"
ALL = "ALL"


def locked_strategies(home: Path) -> dict[str, dict[str, Any]]:
    """Return the strategies the lock holds (strategy -> {reason, at, ...}); {} without a lock."""
    try:
        data = json.loads((home / LOCK_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def lock_holding(home: Path, strategy: str) -> tuple[str, dict[str, Any]] | None:
    """Return (the locked name, its entry) that stops this strategy (itself or ALL), or None."""
    locked = locked_strategies(home)
    for name in (strategy, ALL):
        if name in locked:
            return name, locked[name]
    return None


def write_lock(home: Path, strategy: str, reason: str, report: str = "", by: str = "qmp verify") -> Path:
    """Add the strategy to the lock with the reason; return the lock file's path."""
    home.mkdir(parents=True, exist_ok=True)
    locked = locked_strategies(home)
    entry = {"reason": reason, "at": _now(), "report": report, "by": by}
    locked[strategy] = entry
    _write(home, locked)
    _log(home, {"action": "lock", "strategy": strategy, **entry})
    return home / LOCK_FILE


def remove_lock(home: Path, strategy: str, reason: str) -> dict[str, Any]:
    """Remove the strategy from the lock, logging who and why; return the entry removed. KeyError if absent."""
    if not reason.strip():
        raise ValueError("an unlock needs a reason (what was reviewed)")
    locked = locked_strategies(home)
    entry = locked.pop(strategy)
    _write(home, locked)
    _log(home, {"action": "unlock", "strategy": strategy, "reason": reason, "at": _now(), "by": _user(),
                "locked_for": entry.get("reason", "")})
    return entry


def _write(home: Path, locked: dict[str, Any]) -> None:
    path = home / LOCK_FILE
    if locked:
        path.write_text(json.dumps(locked, indent=2) + "\n")
    else:
        path.unlink(missing_ok=True)


def _log(home: Path, record: dict[str, Any]) -> None:
    with (home / LOCK_LOG).open("a") as log:
        log.write(json.dumps(record) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a container's environment
        return "unknown"
