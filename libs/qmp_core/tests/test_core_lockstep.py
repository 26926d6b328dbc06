"""The lockstep replay's waiting primitive: woken by progress, bounded by a timeout that is counted."""

import asyncio

from qmp_core.lockstep import Progress


async def test_wait_until_when_progress_arrives_later_then_true_and_no_timeout_counted() -> None:
    progress, seen = Progress("snapshots"), [0]

    async def publish() -> None:
        for ts in (1, 2, 3):
            await asyncio.sleep(0.01)
            seen[0] = ts
            progress.advanced()

    task = asyncio.create_task(publish())
    assert await progress.wait_until(lambda: seen[0] >= 3, timeout_s=5.0)
    await task
    assert progress.timeouts == 0


async def test_wait_until_when_condition_already_holds_then_true_without_waiting() -> None:
    progress = Progress("bars")

    assert await progress.wait_until(lambda: True, timeout_s=0.0)
    assert progress.timeouts == 0


async def test_wait_until_when_nothing_advances_then_false_after_timeout_and_counted() -> None:
    progress = Progress("bucket writes")
    loop = asyncio.get_running_loop()
    started = loop.time()

    assert not await progress.wait_until(lambda: False, timeout_s=0.05)
    assert not await progress.wait_until(lambda: False, timeout_s=0.05)

    assert progress.timeouts == 2
    assert 0.09 <= loop.time() - started < 2.0


async def test_wait_until_when_advanced_without_the_condition_then_keeps_waiting_until_it_holds() -> None:
    progress, value = Progress("snapshots"), [0]

    async def step() -> None:
        await asyncio.sleep(0.01)
        progress.advanced()  # a wake-up whose condition does not hold yet
        await asyncio.sleep(0.01)
        value[0] = 1
        progress.advanced()

    task = asyncio.create_task(step())
    assert await progress.wait_until(lambda: value[0] == 1, timeout_s=5.0)
    await task
