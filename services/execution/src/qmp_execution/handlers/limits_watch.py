"""The operators' pre-trade limits, followed through a watch of the `qmp_limits` bucket.

The deployer writes the bucket (`qmp limits apply`); execution only reads it. `start` returns once the
current limits are loaded, so no order goes out under limits an operator has already lowered. An entry
that is no `LimitsEntry` is dead-lettered and leaves the strategy's limits as they were.
"""

import asyncio
import logging
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from qmp_core import bus, subjects
from qmp_core.messages import LimitsEntry, codec
from qmp_execution.engine import ExecutionEngine
from qmp_execution.handlers.constants import INITIAL_STATE_TIMEOUT_S, KV_DELETES, SERVICE

log = logging.getLogger(__name__)


class LimitsWatch:
    """Keep the engine's operator limits equal to the bucket's entries."""

    def __init__(self, kv: KeyValue, engine: ExecutionEngine, js: JetStreamContext) -> None:
        self.kv = kv
        self.engine = engine
        self.js = js
        self.loaded = asyncio.Event()
        self.updates = 0
        self._decoder = codec(LimitsEntry)
        self._letters: set[asyncio.Task[None]] = set()
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = INITIAL_STATE_TIMEOUT_S) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(), name="execution-limits-watch")
        try:
            await asyncio.wait_for(self.loaded.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"limits bucket {subjects.KV_LIMITS}: initial values not loaded in "
                               f"{timeout_s}s") from None

    async def _run(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # every current value has been delivered
                self.loaded.set()
                continue
            invalid = self.apply(entry.key, entry.value or b"", entry.operation)
            if invalid:
                bus.dead_letter_later(self._letters, self.js, SERVICE, f"$KV.{subjects.KV_LIMITS}.{entry.key}",
                                      invalid, entry.value or b"", self.engine.clock)

    def apply(self, key: str, value: bytes, operation: str | None) -> str | None:
        """Apply one change of the bucket; return why a value is invalid (the limits then stay as they were)."""
        if operation in KV_DELETES or not value:
            if key not in self.engine.limits:  # a removal of limits this engine never held: nothing changes
                return None
            reached = self.engine.set_limits(key, None)
            entry = None
        else:
            try:
                entry = self._decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                log.error("limits entry refused", extra={"key": key, "error": str(error)})
                return f"invalid LimitsEntry: {error}"
            reached = self.engine.set_limits(key, entry.limits)
        self.updates += 1
        log.warning("pre-trade limits in force", extra={
            "key": key, "strategies": reached, "limits": msgspec.to_builtins(entry.limits) if entry else None,
            "sender": entry.sender if entry else "", "command_id": entry.command_id if entry else ""})
        return None

    async def stop(self) -> None:
        await bus.stop_watch(self._watcher, self._task)
