"""Control requests: decode → engine → KV (compare-and-set) → state, audit, reply. No decisions here."""

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind

from qmp_core import bus, metrics, subjects
from qmp_core.clock import Clock
from qmp_core.messages import (
    ControlApplied,
    ControlCommand,
    ControlReply,
    Halt,
    ReleaseSafeMode,
    Resume,
    TradingState,
    codec,
    encode,
)
from qmp_core.service import Intake
from qmp_core.telemetry import current_traceparent, messaging, tracer
from qmp_core.trading_state import ControlEntries, source_of
from qmp_deployer.engine import ControlRequest, decide_in_order
from qmp_deployer.store import write_control_audit

log = logging.getLogger(__name__)
_tracer = tracer(__name__)
SERVICE = "deployer"
SEEN_LIMIT = 100_000
RECENT_AUDIT = 10_000  # command ids reloaded from the audit stream at start, for idempotency across restarts
CAS_ATTEMPTS = 5
BATCH_LIMIT = 256  # commands decided and written together at most


@dataclass(frozen=True)
class _Waiting:
    request: ControlRequest
    sender: str
    reply: "asyncio.Future[ControlReply]"


class ControlStore:
    """The control bucket's entries mirrored in memory; written only with compare-and-set.

    `follow` keeps the mirror equal to the bucket through a KV watch, so that with several deployer
    instances (or an operator writing the bucket directly) a reply's state and the published
    `qmp.state.<strategy>` come from what the bucket holds, not from what this instance last wrote.
    Compare-and-set keeps the writes right either way: a stale entry only costs a refresh and a retry.
    """

    def __init__(self, kv: KeyValue, on_invalid: Callable[[str, bytes, str], None] | None = None) -> None:
        self.kv = kv
        self.entries = ControlEntries()
        self.revisions: dict[str, int] = {}
        self._on_invalid = on_invalid  # (key, value, reason): the app dead-letters a value that is no TradingState
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    async def load(self) -> None:
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            keys = []
        for key in keys:
            await self.refresh(key)

    async def follow(self) -> None:
        """Start the watch that applies every later change of the bucket to the mirror."""
        self._watcher = await self.kv.watchall(include_history=False)
        self._task = asyncio.create_task(self._follow(), name="deployer-control-watch")

    async def close(self) -> None:
        await bus.stop_watch(self._watcher, self._task)

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # the end of the current values
                continue
            self.apply(entry.key, entry.value, entry.operation, entry.revision or 0)

    def apply(self, key: str, value: bytes | None, operation: str | None, revision: int) -> None:
        """Take one change of the bucket unless the mirror already holds that revision or a later one."""
        if revision <= self.revisions.get(key, 0):
            return
        if operation in ("DEL", "PURGE") or not value:
            self.entries.delete(key)
            self.revisions[key] = revision  # a later create must be a CAS update on this revision
            return
        self._put(key, value)
        self.revisions[key] = revision

    def _put(self, key: str, value: bytes) -> None:
        invalid = self.entries.put(key, value)
        if invalid and self._on_invalid is not None:
            self._on_invalid(key, value, invalid)

    async def refresh(self, key: str) -> None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            self.entries.delete(key)
            self.revisions.pop(key, None)
            return
        if entry.value:
            self._put(key, entry.value)
            self.revisions[key] = entry.revision or 0

    async def write(self, changed: dict[str, TradingState]) -> bool:
        """Write changed entries with CAS, all at once; return False on a conflict (the caller re-decides).

        The entries that were written stay written: deciding again on the refreshed mirror gives them the
        same values, since every command sets values rather than moving them.
        """
        keys = list(changed)
        results = await asyncio.gather(*(self._write(key, changed[key]) for key in keys), return_exceptions=True)
        conflicts = [key for key, result in zip(keys, results, strict=True)
                     if isinstance(result, KeyWrongLastSequenceError)]
        failure = next((result for result in results
                        if isinstance(result, BaseException) and not isinstance(result, KeyWrongLastSequenceError)),
                       None)
        if failure is not None:
            raise failure
        for key in conflicts:
            await self.refresh(key)
        return not conflicts

    async def _write(self, key: str, state: TradingState) -> None:
        value = encode(state)
        if key in self.revisions:
            revision = await self.kv.update(key, value, last=self.revisions[key])
        else:
            revision = await self.kv.create(key, value)
        if revision > self.revisions.get(key, 0):  # else the watch already brought a later write
            self.entries.set_entry(key, state)
            self.revisions[key] = revision

    def strategies(self) -> set[str]:
        return self.entries.strategies()


def _names_issuer(data: bytes) -> bool:
    """Return whether a command's JSON names its `issued_by` (rather than leaving the default)."""
    try:
        return "issued_by" in msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False


class ControlHandler:
    """Answer `qmp.control.<sender>.<strategy>` requests; the entry written is the sender's (see `source_of`)."""

    def __init__(self, js: JetStreamContext, store: ControlStore, clock: Clock, pool: object | None) -> None:
        self.js = js
        self.store = store
        self.clock = clock
        self.pool = pool
        self.nc = js._nc
        self._input: Intake[ControlCommand] = Intake(ControlCommand, SERVICE, clock, what="control command")
        self._seen: OrderedDict[tuple[str, str], ControlReply] = OrderedDict()
        self._in_flight: dict[tuple[str, str], asyncio.Future[ControlReply]] = {}
        self._audit_queue: asyncio.Queue[ControlApplied] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        # Commands wait here for a committer, which decides and writes them a batch at a time: deciding on
        # the mirror and writing it is one step, and a burst costs one bucket write per changed entry per
        # batch, not one round trip per command. Halts, resumes and safe-mode releases have a queue and a
        # committer of their own, so they never wait for another batch's writes; where both write the same
        # entry, compare-and-set makes the later one decide again on what the first wrote.
        self._waiting: tuple[deque[_Waiting], deque[_Waiting]] = (deque(), deque())
        self._wakeups = (asyncio.Event(), asyncio.Event())
        self._committers: list[asyncio.Task[None] | None] = [None, None]
        self._urgent_in_hand = 0
        self._no_urgent_in_hand = asyncio.Event()
        self._no_urgent_in_hand.set()
        self._finishing: set[asyncio.Task[None]] = set()
        # Requests are numbered as they arrive. Halts and resumes go first to the bucket, so a halt can
        # overtake a resume sent before it: such a resume is refused, never applied after the halt.
        self._arrivals = itertools.count()
        self._halt_arrival: dict[str, int] = {}  # strategy -> arrival number of the last halt applied

    async def handle(self, subject: str, data: bytes) -> bytes:
        arrival = next(self._arrivals)
        started = time.perf_counter()
        with _tracer.start_as_current_span("deployer.control", kind=SpanKind.SERVER) as span:
            reply = await self._handle(subject, data, arrival)
            span.set_attributes({**messaging(subject, "process"), "qmp.accepted": reply.accepted,
                                 "qmp.command_id": reply.command_id})
            if reply.state is not None:
                span.set_attributes({"qmp.strategy": reply.state.strategy, "qmp.status": reply.state.status})
            lane = "urgent" if subjects.is_urgent(subject) else "normal"
            metrics.CONTROL_REPLY.labels(lane).observe(time.perf_counter() - started)
            metrics.CONTROL_REQUESTS.labels(lane, "accepted" if reply.accepted else "refused").inc()
            return encode(reply)

    async def _handle(self, subject: str, data: bytes, arrival: int) -> ControlReply:
        now = self.clock.now_ns()
        try:
            sender, strategy = subjects.control_sender_and_strategy(subject)
            subjects.check_token(strategy, "strategy")
            subjects.check_token(sender, "sender")
        except ValueError as error:
            reason = f"invalid control command: {error}"
            await self._input.reject(self.js, subject, reason, data)
            return ControlReply(accepted=False, reason=reason, ts_event=now)
        command, invalid = await self._input.decode_request(self.js, subject, data)
        if command is None:
            return ControlReply(accepted=False, reason=invalid, ts_event=now)
        if subjects.is_urgent(subject) and not isinstance(command, Halt):
            return ControlReply(accepted=False, command_id=command.command_id, ts_event=now,
                                reason=f"only halts travel the urgent lane (a kill is one): send "
                                       f"{command.__struct_config__.tag} to {subjects.control(strategy, sender)}")
        source = source_of(sender)
        if command.issued_by != source:
            if _names_issuer(data):  # a sender claiming another's entry: refused, and on the record
                reason = (f"issued_by {command.issued_by!r} is not the sender's: {sender!r} may write the "
                          f"{source!r} entry only")
                await self._input.reject(self.js, subject, reason, data)
                return ControlReply(accepted=False, reason=reason, command_id=command.command_id, ts_event=now)
            command = msgspec.structs.replace(command, issued_by=source)
        return await self.apply(strategy, command, sender, arrival)

    async def apply(self, strategy: str, command: ControlCommand, sender: str = SERVICE,
                    arrival: int | None = None) -> ControlReply:
        """Apply a decoded command: the path of bus requests and of the deployer's own in-process writes.

        `sender` is the authenticated identity (the subject's sender token), recorded in the audit trail.

        The reply waits for what makes the command durable and visible (the KV write, the audit stream and
        the state publish); the database copy of the audit is written after it, in order, by a worker.
        """
        if not command.command_id:
            command = msgspec.structs.replace(command, command_id=uuid.uuid4().hex)
        seen_key = (strategy, command.command_id)
        previous = self._seen.get(seen_key)
        if previous is None and seen_key in self._in_flight:  # the same command twice at once: one applies
            previous = await asyncio.shield(self._in_flight[seen_key])
        if previous is not None:
            return msgspec.structs.replace(previous, duplicate=True)
        reply: asyncio.Future[ControlReply] = asyncio.get_running_loop().create_future()
        self._in_flight[seen_key] = reply
        lane = 0 if isinstance(command, Halt | Resume | ReleaseSafeMode) else 1
        request = ControlRequest(strategy, command, arrival, current_traceparent())
        self._waiting[lane].append(_Waiting(request, sender, reply))
        committer = self._committers[lane]
        if committer is None or committer.done():
            self._committers[lane] = asyncio.create_task(self._commit_waiting(lane), name=f"deployer-commit-{lane}")
        self._wakeups[lane].set()
        if lane == 0:
            self._urgent_in_hand += 1
            self._no_urgent_in_hand.clear()
        try:
            return await asyncio.shield(reply)  # a caller that gives up does not undo the command
        finally:
            if self._in_flight.get(seen_key) is reply:
                del self._in_flight[seen_key]
            if lane == 0:
                self._urgent_in_hand -= 1
                if not self._urgent_in_hand:
                    self._no_urgent_in_hand.set()

    async def urgent_done(self) -> None:
        """Return once no halt, resume or safe-mode release is in hand.

        The main lane waits on this before it takes its next request: under a flood of other requests the
        event loop is the bottleneck, and a halt's few round trips must not queue behind new arrivals.
        """
        await self._no_urgent_in_hand.wait()

    async def _commit_waiting(self, lane: int) -> None:
        queue, wakeup = self._waiting[lane], self._wakeups[lane]
        while True:
            await wakeup.wait()
            wakeup.clear()
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), BATCH_LIMIT))]
                try:
                    await self._commit(batch)
                except BaseException as error:  # every waiter hears of it; none waits forever
                    stopping = not isinstance(error, Exception)
                    if stopping:  # the committer ends: what still waits behind this batch gets no answer
                        batch += list(queue)
                        queue.clear()
                    for waiting in batch:
                        if not waiting.reply.done():
                            waiting.reply.set_exception(RuntimeError("the deployer is stopping") if stopping
                                                        else error)
                    if stopping:
                        raise

    async def _commit(self, batch: list[_Waiting]) -> None:
        now = self.clock.now_ns()
        requests = [waiting.request for waiting in batch]
        for _ in range(CAS_ATTEMPTS):
            outcome = decide_in_order(requests, self.store.entries, self._halt_arrival, now)
            if await self.store.write(outcome.changed):
                break
        else:
            for waiting in batch:
                waiting.reply.set_result(ControlReply(accepted=False, reason="control state kept changing; try again",
                                                      command_id=waiting.request.command.command_id, ts_event=now))
            return
        for strategy, arrival in outcome.halt_arrivals.items():  # the other committer may have added some
            self._halt_arrival[strategy] = max(arrival, self._halt_arrival.get(strategy, -1))
        accepted: list[tuple[_Waiting, ControlReply, ControlApplied]] = []
        for waiting, decision in zip(batch, outcome.decisions, strict=True):
            request = waiting.request
            reply = ControlReply(accepted=decision.accepted, reason=decision.reason,
                                 command_id=request.command.command_id, state=decision.effective, ts_event=now)
            if not decision.accepted:
                waiting.reply.set_result(reply)
                continue
            assert decision.effective is not None
            self._remember((request.strategy, request.command.command_id), reply)
            accepted.append((waiting, reply, ControlApplied(strategy=request.strategy, command=request.command,
                                                            state=decision.effective, ts_event=now,
                                                            sender=waiting.sender)))
        if accepted:  # the next batch goes to the bucket while these are audited and answered
            task = asyncio.create_task(self._finish(accepted), name="deployer-control-finish")
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

    async def _finish(self, accepted: list[tuple["_Waiting", ControlReply, ControlApplied]]) -> None:
        """Audit each command on the stream, publish the changed strategies' states once, then reply."""
        try:
            for _, _, applied in accepted:
                log.info("control applied", extra={"strategy": applied.strategy,
                                                   "command": type(applied.command).__name__,
                                                   "command_id": applied.command.command_id,
                                                   "status": applied.state.status})
            await asyncio.gather(*(bus.publish(self.js, subjects.audit_control(applied.strategy), applied,
                                               msg_id=applied.command.command_id) for _, _, applied in accepted))
            await self._publish_states({applied.strategy for _, _, applied in accepted})
        except Exception as error:  # the bucket holds the commands; the senders retry with the same ids
            for waiting, _, _ in accepted:
                if not waiting.reply.done():
                    waiting.reply.set_exception(error)
            return
        for waiting, reply, applied in accepted:
            self._queue_audit(applied)
            if not waiting.reply.done():
                waiting.reply.set_result(reply)

    async def load_recent(self, limit: int = RECENT_AUDIT) -> int:
        """Remember the last `limit` accepted commands from the audit stream and copy them to the database.

        The stream is written before every reply, so this closes the gap a crash leaves between a reply and
        its database row; the insert is idempotent.
        """
        # The stream holds alerts too (qmp.alert.*): its audit subjects say whether there is a record to read.
        info = await self.js.stream_info(subjects.STREAM_AUDIT, subjects_filter=subjects.AUDIT_ALL)
        if info.state.messages == 0 or not info.state.subjects:
            return 0
        first = max(info.state.first_seq, info.state.last_seq - limit + 1)
        subscription = await self.js.subscribe(
            subjects.AUDIT_ALL, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first),
        )
        decoder = codec(ControlApplied)
        applied: list[ControlApplied] = []
        try:
            while True:
                message = await subscription.next_msg(timeout=2.0)
                with contextlib.suppress(msgspec.DecodeError):
                    applied.append(decoder.decode(message.data))
                # The stream holds alerts too: the last of its own subjects is the one with none pending after.
                if message.metadata.num_pending == 0 or message.metadata.sequence.stream >= info.state.last_seq:
                    break
        finally:
            await subscription.unsubscribe()
        for record in applied:
            self._remember((record.strategy, record.command.command_id),
                           ControlReply(accepted=True, command_id=record.command.command_id, state=record.state,
                                        ts_event=record.ts_event))
        await self._audit_to_db(applied)
        return len(applied)

    def _queue_audit(self, applied: ControlApplied) -> None:
        if self.pool is None:
            return
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._write_audits())
        self._audit_queue.put_nowait(applied)

    async def _write_audits(self) -> None:
        while True:
            first = await self._audit_queue.get()
            batch = [first]
            while not self._audit_queue.empty():
                batch.append(self._audit_queue.get_nowait())
            try:
                await self._audit_to_db(batch)
            except Exception:  # the rows come back from the audit stream at the next start
                log.exception("control audit not written to the database", extra={"rows": len(batch)})
            finally:
                for _ in batch:
                    self._audit_queue.task_done()

    async def close(self) -> None:
        """Answer what is in hand, write the queued audit rows, then stop the workers."""
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        for lane, committer in enumerate(self._committers):
            if committer is not None:
                committer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await committer
                self._committers[lane] = None
        if self._worker is not None:
            await self._audit_queue.join()
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def _publish_states(self, strategies: set[str]) -> None:
        targets = set(strategies)
        if subjects.ALL_STRATEGIES in targets:
            targets |= self.store.strategies()
        for target in sorted(targets):
            state = self.store.entries.effective(target)
            await self.nc.publish(subjects.state(target), encode(state), headers=bus.headers_for(None))

    def _remember(self, key: tuple[str, str], reply: ControlReply) -> None:
        self._seen[key] = reply
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)

    async def _audit_to_db(self, records: list[ControlApplied]) -> None:
        if self.pool is None or not records:
            return
        await write_control_audit(self.pool, records)  # type: ignore[arg-type]
