"""The operators' pre-trade limits, followed through a watch of the `qmp_limits` bucket.

The deployer writes the bucket (`qmp limits apply`); execution only reads it. `start` returns once the
current limits are loaded, so no order goes out under limits an operator has already lowered. An entry
that is no `LimitsEntry` is dead-lettered and leaves the strategy's limits as they were.
"""

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from qmp_core import subjects
from qmp_core.messages import LimitsEntry, codec
from qmp_execution.engine import ExecutionEngine
from qmp_execution.handlers.bucket_watch import BucketWatch
from qmp_execution.handlers.constants import KV_DELETES

log = logging.getLogger(__name__)


class LimitsWatch(BucketWatch):
    """Keep the engine's operator limits equal to the bucket's entries."""

    bucket = subjects.KV_LIMITS

    def __init__(self, kv: KeyValue, engine: ExecutionEngine, js: JetStreamContext) -> None:
        super().__init__(kv, engine, js)
        self._decoder = codec(LimitsEntry)

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
