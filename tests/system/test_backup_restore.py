"""Backup → wipe → restore, as an operator runs it: a replay's data (tables and streams) backed up with
`qmp backup` from one stack, the stack gone, `qmp restore --latest --yes` into a fresh one (new NATS and
PostgreSQL), the same counts and checksums; then the services start on what was restored.

Runs on embedded servers of its own only: a restore replaces every table and stream of its target.
"""

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from qmp_core import subjects
from qmp_core.datasets import load_sp500_index
from qmp_ops.backup import read_manifest, stream_checksum, table_checksums
from qmp_ops.runtime.supervisor import SERVICES, Stack, StackOptions

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(bool(os.environ.get("QMP_NATS_URL") or os.environ.get("QMP_DATABASE_URL")),
                       reason="replaces every table and stream of its stack: embedded servers only"),
]

ROOT = Path(__file__).resolve().parents[2]
START, END = "2008-01-01", "2008-02-29"
WAIT_S = 120.0


def qmp(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `qmp` CLI as an operator would, in `cwd` (where `.qmp/connection.json` names the stack)."""
    return subprocess.run([sys.executable, "-m", "qmp_ops.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


def options(home: Path, strategy: str) -> StackOptions:
    return StackOptions(home=home, clock="replay", service_env={
        "collector": {"QMP_SOURCE": "history", "QMP_VENUE": strategy + "v", "QMP_START": START, "QMP_END": END,
                      "QMP_REPLAY_RATE": "0", "QMP_LOCKSTEP_STRATEGY": strategy},
        "execution": {"QMP_STRATEGIES": f"{strategy}=qmp_test_strategies:DailyRebalancer",
                      "PYTHONPATH": str(ROOT / "tests" / "support")},
    })


async def held(stack: Stack, tables: list[str]) -> tuple[dict, dict]:
    """Return what the stack holds: each table's count and checksum, each QMP stream's count and checksum."""
    connection = await asyncpg.connect(stack.database_url)
    try:
        table_sums = await table_checksums(connection, tables)
    finally:
        await connection.close()
    nc = await stack.connection.connect()
    try:
        stream_sums = {name: await stream_checksum(nc, name) for name in
                       (subjects.STREAM_MARKET_DATA, subjects.STREAM_EXEC, subjects.STREAM_RISK, subjects.STREAM_AUDIT)}
    finally:
        await nc.close()
    return table_sums, stream_sums


async def replay_to_the_end(stack: Stack, strategy: str, days: int) -> None:
    await stack.start_services()
    connection = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + WAIT_S
        while await connection.fetchval("SELECT count(DISTINCT ts) FROM risk_snapshots WHERE strategy = $1",
                                        strategy) < days:
            assert time.monotonic() < deadline, f"the replay did not finish; logs in {stack.run_dir}"
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


def test_backup_when_stack_wiped_and_restored_into_fresh_servers_then_same_checksums_and_services_start(
        tmp_path: Path) -> None:
    strategy = "bk" + uuid.uuid4().hex[:8]
    days = len(load_sp500_index(START, END))
    first, second = tmp_path / "first", tmp_path / "second"
    stack = Stack(options(first / ".qmp", strategy))
    stack.start_servers()
    try:
        asyncio.run(replay_to_the_end(stack, strategy, days))
        for service in reversed(SERVICES):  # a stack at rest: nothing moves between backup and comparison
            stack.stop_service(service)
        made = qmp(first, "backup")
        assert made.returncode == 0 and "verified" in made.stdout, made.stdout + made.stderr
        backup_dir = next((first / "backups").iterdir())
        manifest = read_manifest(backup_dir)
        tables_before, streams_before = asyncio.run(held(stack, list(manifest["tables"])))
    finally:
        stack.stop()  # the wipe: the servers and their files are gone with the run
    shutil.rmtree(stack.run_dir)
    shutil.copytree(first / "backups", second / "backups")

    fresh = Stack(options(second / ".qmp", strategy))
    fresh.start_servers()
    try:
        restored = qmp(second, "restore", "--latest", "--yes")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "checksums as backed up" in restored.stdout and "streams" in restored.stdout, restored.stdout
        tables_after, streams_after = asyncio.run(held(fresh, list(manifest["tables"])))
        # The fresh stack holds what the first held, table by table and stream by stream.
        assert tables_after == tables_before
        assert streams_after == streams_before
        assert tables_after["fills"]["rows"] > 0 and tables_after["risk_snapshots"]["rows"] >= days
        assert streams_after[subjects.STREAM_EXEC]["messages"] > 0
        for table, spec in manifest["tables"].items():
            assert tables_after[table] == {"rows": spec["rows"], "checksum": spec["checksum"]}, table
        # The services start on the restored data: their durable consumers are where the backup left them.
        asyncio.run(fresh.start_services())
        status = qmp(second, "status")
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        fresh.stop()
