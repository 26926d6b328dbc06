"""Execution's reconciliation reports: one whose action is `halt` halts its strategy.

Execution may not write control state (its NATS user cannot publish control commands), so when its books
and the venue disagree and its policy says halt, it says so in a `ReconciliationReport`, and the deployer,
which owns control state, halts the strategy in its own entry: latched, in the audit trail, until an
operator resumes it. The command id comes from the report, so a report heard twice halts once.
"""

import logging

import msgspec

from qmp_core.messages import Halt, ReconciliationReport, codec
from qmp_deployer.handlers.control import SERVICE, ControlHandler

log = logging.getLogger(__name__)

REASON_MAX = 1_000  # a Halt's reason is at most this long


class ReconciliationHalts:
    """Turns a report asking for a halt into the deployer's halt of that strategy."""

    def __init__(self, control: ControlHandler) -> None:
        self.control = control
        self.halts = 0
        self._decode = codec(ReconciliationReport)

    async def on_report(self, data: bytes) -> None:
        try:
            report = self._decode.decode(data)
        except msgspec.DecodeError as error:
            log.error("reconciliation report unreadable", extra={"error": str(error)})
            return
        if report.action != "halt":
            return
        command = Halt(reason=report.reason[:REASON_MAX] or "reconciliation: positions differ at the venue",
                       issued_by=SERVICE, command_id=f"reconciliation-{report.strategy}-{report.ts_event}")
        reply = await self.control.apply(report.strategy, command)
        self.halts += int(reply.accepted and not reply.duplicate)
        log.warning("strategy halted: its books and the venue disagree", extra={
            "strategy": report.strategy, "reason": report.reason, "accepted": reply.accepted})
