"""Halts execution asks for: a reconciliation report whose action is `halt`, and a `HaltRequest` (the
repeated-execution throttle).

Execution may not write control state (its NATS user cannot publish control commands), so it says what it
found, and the deployer, which owns control state, halts the strategy in its own entry: latched, in the
audit trail, until an operator resumes it. The command id comes from the message, so a message heard twice
halts once.
"""

import logging
from typing import Any

import msgspec

from qmp_core.messages import Halt, HaltRequest, ReconciliationReport, codec
from qmp_deployer.handlers.control import SERVICE, ControlHandler

log = logging.getLogger(__name__)

REASON_MAX = 1_000  # a Halt's reason is at most this long


class ExecutionHalts:
    """Turns execution's reports and requests that ask for a halt into the deployer's halt of the strategy."""

    def __init__(self, control: ControlHandler) -> None:
        self.control = control
        self._reports = codec(ReconciliationReport)
        self._requests = codec(HaltRequest)

    async def on_reconciliation(self, data: bytes) -> None:
        report = self._decode(self._reports, data)
        if report is not None and report.action == "halt":
            await self._halt(report.strategy, report.reason or "reconciliation: positions differ at the venue",
                             f"reconciliation-{report.strategy}-{report.ts_event}")

    async def on_halt_request(self, data: bytes) -> None:
        request = self._decode(self._requests, data)
        if request is not None:
            await self._halt(request.strategy, request.reason,
                             f"halt-request-{request.strategy}-{request.ts_event}")

    @staticmethod
    def _decode(decoder: Any, data: bytes) -> Any:
        try:
            return decoder.decode(data)
        except msgspec.DecodeError as error:
            log.error("message from execution unreadable", extra={"error": str(error)})
            return None

    async def _halt(self, strategy: str, reason: str, command_id: str) -> None:
        command = Halt(reason=reason[:REASON_MAX], issued_by=SERVICE, command_id=command_id)
        reply = await self.control.apply(strategy, command)
        log.warning("strategy halted at execution's request", extra={
            "strategy": strategy, "reason": reason, "accepted": reply.accepted, "command_id": command_id})
