"""Each hosted strategy's rollout, followed through a watch of the `qmp_rollouts` bucket.

The deployer writes the bucket; execution only reads it, for two things: the rollout id that goes on every
new order and fill (`deployment_id`), and the phase's environment, which decides whether this instance
(`QMP_PHASE_ENV`: its venue's paper endpoint, or its live one) trades the strategy now
(`ExecutionEngine.follow_rollout`). `start` returns once the current rollouts are loaded, so no order goes
out at the live venue for a strategy that is still in its paper phase. An entry that is no `RolloutState`
is dead-lettered and leaves the strategy as it was.
"""

import asyncio
import logging
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from qmp_core import bus, subjects
from qmp_core.messages import RolloutState, codec
from qmp_execution.engine import ExecutionEngine
from qmp_execution.handlers.constants import INITIAL_STATE_TIMEOUT_S, KV_DELETES, SERVICE

log = logging.getLogger(__name__)


class RolloutWatch:
    """Keep the engine's view of every hosted strategy's rollout equal to the bucket's entries."""

    def __init__(self, kv: KeyValue, engine: ExecutionEngine, js: JetStreamContext) -> None:
        self.kv = kv
        self.engine = engine
        self.js = js
        self.loaded = asyncio.Event()
        self.updates = 0
        self._decoder = codec(RolloutState)
        self._prefix = subjects.rollout_key("")
        self._letters: set[asyncio.Task[None]] = set()
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = INITIAL_STATE_TIMEOUT_S) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(), name="execution-rollout-watch")
        try:
            await asyncio.wait_for(self.loaded.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"rollouts bucket {subjects.KV_ROLLOUTS}: initial values not loaded in "
                               f"{timeout_s}s") from None

    async def _run(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # every current value has been delivered
                self.loaded.set()
                continue
            invalid = self.apply(entry.key, entry.value or b"", entry.operation)
            if invalid:
                bus.dead_letter_later(self._letters, self.js, SERVICE, f"$KV.{subjects.KV_ROLLOUTS}.{entry.key}",
                                      invalid, entry.value or b"", self.engine.clock)

    def apply(self, key: str, value: bytes, operation: str | None) -> str | None:
        """Apply one change of the bucket; return why a value is invalid (the strategy then stays as it was)."""
        if not key.startswith(self._prefix):
            return None
        strategy = key.removeprefix(self._prefix)
        if operation in KV_DELETES or not value:
            rollout = None
        else:
            try:
                rollout = self._decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                log.error("rollout entry refused", extra={"key": key, "error": str(error)})
                return f"invalid RolloutState: {error}"
            if rollout.strategy != strategy:
                return f"rollout of {rollout.strategy!r} under the key of {strategy!r}"
        if not self.engine.follow_rollout(strategy, rollout):
            return None
        self.updates += 1
        log.info("rollout followed", extra={
            "strategy": strategy, "deployment_id": rollout.rollout_id if rollout else "",
            "phase_index": rollout.phase_index if rollout else -1,
            "elsewhere": self.engine.elsewhere.get(strategy, "")})
        return None

    async def stop(self) -> None:
        await bus.stop_watch(self._watcher, self._task)
