"""Execution's database writes: a batch written twice is stored once, and a batch the database refuses
is refused whole and leaves the session able to write the next one."""

import dataclasses

import asyncpg
import msgspec
import pytest
from execution_testkit import RandomWeights, batches

from qmp_core.clock import TestClock
from qmp_core.db import connect_pool
from qmp_core.messages import RolloutState
from qmp_execution.engine import EngineConfig, ExecutionEngine
from qmp_execution.store import ExecutionStore

pytestmark = pytest.mark.integration


async def counts(pool: asyncpg.Pool, strategy: str) -> tuple[int, int, int]:
    return (await pool.fetchval("SELECT count(*) FROM fills WHERE strategy = $1", strategy),
            await pool.fetchval("SELECT count(*) FROM equity_curve WHERE strategy = $1", strategy),
            await pool.fetchval("SELECT count(*) FROM positions WHERE strategy = $1", strategy))


async def test_store_when_batches_repeat_and_one_is_refused_then_each_row_once_and_writing_goes_on(
        database_url: str, unique_id: str) -> None:
    config = msgspec.convert({"es_budget": 0.0, "participation_limit": 0.0, "min_order_notional": 0.0,
                              "price_band": 0.0}, EngineConfig)
    engine = ExecutionEngine({unique_id: RandomWeights()}, config, TestClock(0))
    engine.follow_rollout(unique_id, RolloutState(strategy=unique_id, rollout_id="r-7", plan="test", phases=[]))
    results = [list(engine.process(batch).results.values()) for batch in batches(6, 5, seed=9)]
    pool = await connect_pool(database_url, max_size=1)  # one session: the staging tables' own
    try:
        store = ExecutionStore(pool)
        trading = next(r for batch_results in results for r in batch_results if r.fills)
        refused = [dataclasses.replace(trading, fills=[msgspec.structs.replace(trading.fills[0], symbol="A\x00B")])]
        with pytest.raises(asyncpg.PostgresError):  # a NUL no text column takes: the whole batch is refused,
            await store.write(refused)              # and the session writes on
        assert await counts(pool, unique_id) == (0, 0, 0)

        for batch_results in results:
            await store.write(batch_results)
            await store.write(batch_results)  # a redelivered batch
        final = await counts(pool, unique_id)
        deployments = await pool.fetch("SELECT DISTINCT deployment_id FROM fills WHERE strategy = $1", unique_id)
        models = await pool.fetch("SELECT fill_id, model_slippage_bps FROM fills WHERE strategy = $1", unique_id)
    finally:
        await pool.close()

    fills = sum(len(r.fills) for batch_results in results for r in batch_results)
    assert fills > 0
    assert final == (fills, 6, sum(len(r.snapshot.symbols) for b in results for r in b))
    assert [row["deployment_id"] for row in deployments] == ["r-7"]  # each fill tied to its rollout
    predicted = {f.fill_id: f.model_slippage_bps for b in results for r in b for f in r.fills}
    assert {row["fill_id"]: row["model_slippage_bps"] for row in models} == predicted  # the model's bps, stored
    assert all(value is not None for value in predicted.values())
