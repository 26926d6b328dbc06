"""Following a KV bucket that execution only reads (the operators' limits, the rollouts): every current value
loaded before `start` returns, each change applied as it comes, and a value that cannot be used
dead-lettered with its reason (the subclass's `apply` says why) while what it described stays as it was."""

import asyncio
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from qmp_core import bus
from qmp_execution.engine import ExecutionEngine
from qmp_execution.handlers.constants import INITIAL_STATE_TIMEOUT_S, SERVICE


class BucketWatch:
    """A watch of one bucket; subclasses name it (`bucket`) and apply each change to the engine (`apply`)."""

    bucket = ""

    def __init__(self, kv: KeyValue, engine: ExecutionEngine, js: JetStreamContext) -> None:
        self.kv = kv
        self.engine = engine
        self.js = js
        self.loaded = asyncio.Event()
        self.updates = 0
        self._letters: set[asyncio.Task[None]] = set()
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    def apply(self, key: str, value: bytes, operation: str | None) -> str | None:
        """Apply one change of the bucket; return why a value is invalid, else None."""
        raise NotImplementedError

    async def start(self, timeout_s: float = INITIAL_STATE_TIMEOUT_S) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(), name=f"execution-{self.bucket}-watch")
        try:
            await asyncio.wait_for(self.loaded.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"bucket {self.bucket}: initial values not loaded in {timeout_s}s") from None

    async def _run(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # every current value has been delivered
                self.loaded.set()
                continue
            invalid = self.apply(entry.key, entry.value or b"", entry.operation)
            if invalid:
                bus.dead_letter_later(self._letters, self.js, SERVICE, f"$KV.{self.bucket}.{entry.key}", invalid,
                                      entry.value or b"", self.engine.clock)

    async def stop(self) -> None:
        await bus.stop_watch(self._watcher, self._task)
