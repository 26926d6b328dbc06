"""The control bucket followed through a KV watch: the engine trades under what the bucket holds."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from qmp_core import bus, metrics, subjects
from qmp_core.lockstep import Progress
from qmp_core.trading_state import SEVERITY, strategy_of
from qmp_execution.engine import ExecutionEngine
from qmp_execution.handlers.constants import (
    CATCH_UP_TIMEOUT_S,
    INITIAL_STATE_TIMEOUT_S,
    KV_DELETES,
    SERVICE,
)

log = logging.getLogger(__name__)

GUARD_INTERVAL_S = 1.0  # live: how often the watch is checked against the bucket
REWATCH_INTERVALS = 5  # a new watch has this many intervals to deliver the bucket's values


class ControlWatch:
    """Keep the engine's control entries equal to the KV bucket, from its current values on.

    `start` returns once the current values are loaded, so no batch is traded under a stale state.
    """

    def __init__(self, kv: KeyValue, engine: ExecutionEngine, js: JetStreamContext | None = None) -> None:
        self.kv = kv
        self.engine = engine
        self.js = js
        self.loaded = asyncio.Event()
        self.updates = 0
        self.revision = 0  # the bucket's stream sequence applied so far
        self._writes = Progress("control bucket writes")  # step 2 of the lockstep replay (qmp_core.lockstep)
        self._letters: set[asyncio.Task[None]] = set()
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self.on_change: Callable[[], None] | None = None  # called after each change (the kill switch looks)
        self.halted_at: dict[str, float] = {}  # strategy -> when its halt was written, until an order is denied
        self._status: dict[str, str] = {}
        self._guard: asyncio.Task[None] | None = None
        self._reloading: set[str] | None = None  # keys a renewed watch has delivered, until it has them all
        self.rewatches = 0  # times the guard found the watch silent and watched the bucket anew

    async def start(self, timeout_s: float = INITIAL_STATE_TIMEOUT_S) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(), name="execution-control-watch")
        try:
            await asyncio.wait_for(self.loaded.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"control bucket {subjects.KV_CONTROL}: initial values not loaded in "
                               f"{timeout_s}s") from None
        log.info("control state loaded", extra={"keys": list(self.engine.controls), "states": {
            sid: self.engine.state(sid).status for sid in self.engine.strategies()}})

    async def _run(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # the watcher's marker: every current value has been delivered
                if self._reloading is not None:  # a renewed watch: what it did not deliver is gone
                    for key in set(self.engine.controls) - self._reloading:
                        self.engine.controls.delete(key)
                    self._reloading = None
                self.loaded.set()
                continue
            if self._reloading is not None:
                self._reloading.add(entry.key)
            written_s = entry.created.timestamp() if isinstance(entry.created, datetime) else None
            invalid = self.apply(entry.key, entry.value or b"", entry.operation, entry.revision or 0, written_s)
            if self.on_change is not None and self.loaded.is_set():
                self.on_change()
            if invalid and self.js is not None:
                bus.dead_letter_later(self._letters, self.js, SERVICE, f"$KV.{subjects.KV_CONTROL}.{entry.key}",
                                      invalid, entry.value or b"", self.engine.clock)

    async def catch_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> int:
        """Wait until every write the bucket holds now has been applied; return the bucket's last sequence.

        In a replay the risk service awaits the deployer's reply to a breaker command before it publishes
        the snapshot the collector waits for, so the write is in the bucket before the next batch is sent;
        but the watch and the market data reach this service on different subscriptions, in either order.
        Waiting for the watch here makes a replay trade every batch under the same state, run after run.
        """
        if self.js is None:
            return self.revision
        last = (await self.js.stream_info(f"KV_{subjects.KV_CONTROL}")).state.last_seq or 0
        if await self._writes.wait_until(lambda: self.revision >= last, timeout_s):
            return last
        # A watch can fall silent (seen after a nats-server restart): read the bucket again with a new one.
        log.warning("control watch behind the bucket; watching it anew", extra={"applied": self.revision,
                                                                                 "bucket": last})
        try:
            await self._rewatch(timeout_s)
        except TimeoutError:
            log.warning("control watch behind the bucket; trading on the state it has",
                        extra={"applied": self.revision, "bucket": last})
        return last

    async def _rewatch(self, timeout_s: float) -> None:
        """Replace the watch with a new one, which delivers every current value again. The entries in force stay
        until it has: then those it did not deliver (deleted meanwhile) go. So no batch ever trades under a
        half-loaded state, even when the new watch is slow (the caller goes on after `timeout_s`)."""
        await bus.stop_watch(self._watcher, self._task)
        self._reloading = set()
        self.revision = 0
        self.loaded = asyncio.Event()
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(), name="execution-control-watch")
        await asyncio.wait_for(self.loaded.wait(), timeout_s)

    def guard(self, lock: asyncio.Lock, interval_s: float = GUARD_INTERVAL_S) -> asyncio.Task[None] | None:
        """On a live clock, check every `interval_s` that the watch keeps up with the bucket; one that left a
        write unapplied for a whole interval is replaced, under `lock` (the bar handler's: no batch trades
        while the entries are reloaded).

        A replay checks before every batch (`catch_up`). Live, nothing else would: a watch whose ordered
        consumer lived on a cluster server that died was seen to recover only after 5 to 19 s, a halt unapplied
        meanwhile. Returns the guard's task (the service's health watches it), None without a JetStream context.
        """
        if self.js is not None and self._guard is None:
            self._guard = asyncio.create_task(self._keep_up(lock, interval_s), name="execution-control-guard")
        return self._guard

    async def _keep_up(self, lock: asyncio.Lock, interval_s: float) -> None:
        assert self.js is not None
        pending = 0  # the bucket's last write seen unapplied at the previous check
        while True:
            await asyncio.sleep(interval_s)
            try:
                last = (await self.js.stream_info(f"KV_{subjects.KV_CONTROL}")).state.last_seq or 0
            except (NatsError, OSError):  # the server is away: the watch's own reconnect comes first
                continue
            if self.revision >= last:  # every write applied
                pending = 0
                continue
            if pending == 0 or self.revision >= pending:  # behind, but moving: another interval to deliver
                pending = last
                continue
            log.warning("control watch silent; watching the bucket anew",
                        extra={"applied": self.revision, "bucket": last, "unapplied_since_s": interval_s})
            async with lock:
                try:
                    await self._rewatch(interval_s * REWATCH_INTERVALS)
                    self.rewatches += 1
                except (TimeoutError, NatsError, OSError) as error:
                    log.warning("control watch not renewed; trying again", extra={"error": str(error)})
            pending = 0

    @property
    def catch_up_timeouts(self) -> int:
        return self._writes.timeouts

    def apply(self, key: str, value: bytes, operation: str | None, revision: int = 0,
              written_s: float | None = None) -> str | None:
        """Apply one KV change to the engine's entries, log the effective state; return why a value is invalid.

        `written_s` is when the bucket stored the change (epoch s): a halt's is kept in `halted_at` until the
        first order denied under it, which reports the time between (`qmp_halt_to_denial_seconds`).
        """
        controls = self.engine.controls
        invalid = None
        if operation in KV_DELETES:
            controls.delete(key)
        else:
            invalid = controls.put(key, value)
        strategy = strategy_of(key)
        self.updates += 1
        self.revision = max(self.revision, revision)
        self._writes.advanced()
        hosted = self.engine.strategies()
        affected = hosted if strategy == subjects.ALL_STRATEGIES else ([strategy] if strategy in hosted else [])
        for sid in affected:
            state = self.engine.state(sid)
            if state.status == "HALTED" and self._status.get(sid) != "HALTED":
                self.halted_at[sid] = written_s if written_s is not None else time.time()
            elif state.status != "HALTED":
                self.halted_at.pop(sid, None)
            self._status[sid] = state.status
            metrics.ALLOCATION.labels(sid).set(state.allocation)
            metrics.SIZE_MULTIPLIER.labels(sid).set(state.size_multiplier)
            for status in SEVERITY:
                metrics.TRADING_STATUS.labels(sid, status).set(1.0 if status == state.status else 0.0)
            log.info("trading state", extra={"strategy": sid, "key": key, "operation": operation or "PUT",
                                             "status": state.status, "reason": state.reason,
                                             "allocation": state.allocation,
                                             "size_multiplier": state.size_multiplier})
        return invalid

    async def stop(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._guard
            self._guard = None
        await bus.stop_watch(self._watcher, self._task)
