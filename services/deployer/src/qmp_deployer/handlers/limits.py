"""Pre-trade limits requests: decode → engine → audit stream, bucket, database → reply. No decisions here.

`qmp.limits.<sender>.<strategy>` carries a `SetLimits` from an operator (the server lets only operators
publish there, each under their own name). The change is journaled first (`qmp.audit.limits.<strategy>`,
deduplicated by command id), then written to the `qmp_limits` bucket, which execution watches, then to
`limits_audit`; a request sent again with the same command id is answered as a duplicate.
"""

import asyncio
import logging

import asyncpg
import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from qmp_core import bus, subjects
from qmp_core.clock import Clock
from qmp_core.messages import LimitsEntry, LimitsReply, SetLimits, codec, encode
from qmp_deployer.engine import decide_limits
from qmp_deployer.store import limits_change_seen, write_limits_change

log = logging.getLogger(__name__)


class LimitsHandler:
    """Answers limits requests one at a time (they are rare; one at a time keeps read-then-write exact)."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, clock: Clock, pool: asyncpg.Pool | None) -> None:
        self.js = js
        self.kv = kv
        self.clock = clock
        self.pool = pool
        self._decoder = codec(SetLimits)
        self._entries = codec(LimitsEntry)
        self._lock = asyncio.Lock()

    async def handle(self, subject: str, data: bytes) -> bytes:
        return encode(await self.apply(subject, data))

    async def apply(self, subject: str, data: bytes) -> LimitsReply:
        now = self.clock.now_ns()
        try:
            sender, strategy = subjects.limits_sender_and_strategy(subject)
            request = self._decoder.decode(data)
        except (ValueError, msgspec.DecodeError) as error:
            return LimitsReply(accepted=False, reason=f"invalid SetLimits: {error}", ts_event=now)
        async with self._lock:
            current, revision = await self._current(strategy)
            if request.command_id and self.pool is not None and \
                    await limits_change_seen(self.pool, strategy, request.command_id):
                return LimitsReply(accepted=True, duplicate=True, entry=current, ts_event=now,
                                   reason="already applied (same command id)")
            decision = decide_limits(strategy, sender, request, current, now)
            if not decision.accepted or decision.record is None:
                return LimitsReply(accepted=decision.accepted, reason=decision.reason, entry=current, ts_event=now)
            record = decision.record
            await bus.publish(self.js, subjects.audit_limits(strategy), record,
                              msg_id=f"limits:{strategy}:{request.command_id}" if request.command_id else None)
            if decision.entry is None:
                await self.kv.delete(strategy, last=revision or None)
            elif revision:
                await self.kv.update(strategy, encode(decision.entry), last=revision)
            else:
                await self.kv.create(strategy, encode(decision.entry))
            if self.pool is not None:
                await write_limits_change(self.pool, record)
        log.warning("pre-trade limits changed", extra={"strategy": strategy, "sender": sender,
                                                       "changed": list(decision.changed),
                                                       "command_id": request.command_id, "reason": request.reason})
        return LimitsReply(accepted=True, changed=list(decision.changed), entry=decision.entry, ts_event=now)

    async def _current(self, strategy: str) -> tuple[LimitsEntry | None, int]:
        """The strategy's entry and its revision (0: none, or deleted: `create` writes it anew)."""
        try:
            entry = await self.kv.get(strategy)
        except (KeyNotFoundError, KeyDeletedError):
            return None, 0
        if not entry.value:
            return None, entry.revision or 0
        try:
            return self._entries.decode(entry.value), entry.revision or 0
        except msgspec.DecodeError:  # an entry nobody should have written: the request replaces it
            log.error("limits entry unreadable; replaced", extra={"strategy": strategy})
            return None, entry.revision or 0
