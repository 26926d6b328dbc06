"""Risk's stop-loss commands: hand each ClosePosition to the engine, acknowledge it once a snapshot holds it."""

import contextlib
from collections.abc import Collection, Mapping

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from qmp_core import subjects
from qmp_core.clock import Clock
from qmp_core.messages import (
    ClosePosition,
    PortfolioSnapshot,
)
from qmp_core.service import Intake
from qmp_core.telemetry import extract_context, messaging, tracer
from qmp_execution.engine import ExecutionEngine
from qmp_execution.handlers.constants import (
    SERVICE,
    letter_id,
)


class StopLossAcks:
    """Hold each applied ClosePosition's acknowledgement until a PortfolioSnapshot holding it is on the bus.

    Until the strategy's next snapshot carries it (`PortfolioSnapshot.stop_losses`), a stop-loss lives only
    in this process: acknowledged at once, a restart in between would lose it. Held, it is acknowledged
    after that snapshot; after a crash JetStream redelivers it to the next instance, which applies it to the
    restored book. A redelivery of a held command replaces the held delivery (acks are per delivery).
    """

    def __init__(self) -> None:
        self._held: dict[str, dict[str, Msg]] = {}  # strategy -> command id -> the delivery to acknowledge

    def holds(self, strategy: str, command_id: str) -> bool:
        return command_id in self._held.get(strategy, {})

    def is_held(self, message: Msg) -> bool:
        return any(held is message for by_id in self._held.values() for held in by_id.values())

    def hold(self, strategy: str, command_id: str, message: Msg) -> None:
        self._held.setdefault(strategy, {})[command_id] = message

    async def release(self, snapshot: PortfolioSnapshot, in_force: Collection[str]) -> int:
        """Acknowledge the held commands this snapshot settles; return how many.

        Settled: the snapshot holds the stop-loss, or the stop is no longer in force (its position is flat).
        A re-published older snapshot (a redelivered batch) settles nothing the engine still holds.
        """
        held = self._held.get(snapshot.strategy)
        if not held:
            return 0
        carried = {stop.command_id for stop in snapshot.stop_losses}
        settled = [cid for cid in held if cid in carried or cid not in in_force]
        for command_id in settled:
            # An ack that fails (connection lost, delivery already nak'd) only means a redelivery, which
            # the engine recognises by its command id.
            with contextlib.suppress(nats.errors.Error):
                await held.pop(command_id).ack()
        return len(settled)


class StopLossHandler:
    """Hand risk's ClosePosition commands to the engine; what cannot be used goes to the DLQ with its reason."""

    def __init__(self, engine: ExecutionEngine, js: JetStreamContext, clock: Clock,
                 acks: StopLossAcks | None = None) -> None:
        self.engine = engine
        self.js = js
        self.clock = clock
        self.acks = acks
        self.received = 0
        self.applied = 0
        self._input: Intake[ClosePosition] = Intake(ClosePosition, SERVICE, clock)
        self._tracer = tracer("qmp.execution")

    @property
    def dead_letters(self) -> int:
        return self._input.dead_letters

    async def handle(self, data: bytes, subject: str, headers: Mapping[str, str] | None,
                     delivery_id: str = "", message: Msg | None = None) -> bool:
        """Decode and apply one command; return whether it put a stop-loss on; raise only when transient.

        With `message` and `acks`, an applied command's delivery (or a redelivery of one still held) is held
        for acknowledgement after the next snapshot; the caller acknowledges what is not `acks.is_held`.
        """
        with self._tracer.start_as_current_span("execution.stop_loss", context=extract_context(headers),
                                                 kind=SpanKind.CONSUMER) as span:
            span.set_attributes(messaging(subject, "process"))
            self.received += 1
            command = await self._input.decode(self.js, subject, data, letter_id(delivery_id))
            if command is None:
                return False
            strategy = subjects.strategy_of(subject, 2)
            if command.strategy != strategy:
                await self._input.reject(self.js, subject, f"ClosePosition for strategy {command.strategy!r} on the "
                                         f"subject of {strategy!r}", data, letter_id(delivery_id))
                return False
            span.set_attribute("qmp.strategy", command.strategy)
            span.set_attribute("qmp.symbol", command.symbol)
            span.set_attribute("qmp.command_id", command.command_id)
            pending = self.acks is not None and self.acks.holds(command.strategy, command.command_id)
            applied = self.engine.on_close_position(command)
            if self.acks is not None and message is not None and (applied or pending):
                self.acks.hold(command.strategy, command.command_id, message)
            span.set_attribute("qmp.applied", applied)
            self.applied += applied
            return applied
