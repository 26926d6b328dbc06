"""Reconciliation of positions with the venue: at start and every `reconcile_interval_s`, execution's books
against the venue's account, and the configured policy applied to what differs.

Fills the venue made since the last batch are booked first (`BarHandler.venue_differences`), so only what
the books cannot explain is left: a position changed by hand at the broker, another system trading the
account, a fill lost for good. Each hosted strategy gets a `ReconciliationReport` on
`qmp.exec.<strategy>.reconciliation` with the differences and its action:
- `adopt`: a difference with one owner (see `ExecutionEngine.adopt`) is booked into that book (an adjustment
  fill at the last price, published with the book); what has no owner falls back to `halt`;
- `halt`: the report asks for a halt, which the deployer applies (execution may not write control state):
  latched, in the audit trail, until a person has looked and resumes;
- `report`: nothing changes; the report says what differs.
Batches wait while it runs (the market-data handler's lock). A venue that cannot be reached is tried at the
next interval; nothing is concluded from a failed call.
"""

import asyncio
import contextlib
import logging

from qmp_core import subjects
from qmp_core.messages import PositionDifference, ReconciliationPolicy, ReconciliationReport, encode
from qmp_execution.engine import BatchResult
from qmp_execution.handlers.bars import BarHandler
from qmp_execution.handlers.constants import PUBLISH_TIMEOUT_S
from qmp_execution.rest import BrokerRejected, BrokerUnavailable

log = logging.getLogger(__name__)


class Reconciler:
    """Compares the books with the venue on a timer and applies the policy; keeps the latest reports."""

    def __init__(self, bars: BarHandler, broker: str, policy: ReconciliationPolicy, interval_s: float) -> None:
        self.bars = bars
        self.broker = broker
        self.policy = policy
        self.interval_s = interval_s
        self.reports: dict[str, ReconciliationReport] = {}  # strategy -> its latest report
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="execution-reconciliation")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except (BrokerRejected, BrokerUnavailable) as error:
                log.warning("reconciliation postponed: the venue did not answer", extra={"error": str(error)})
            except Exception:  # the timer must go on: the next run may succeed
                log.exception("reconciliation failed; trying again at the next interval")
            if self.interval_s <= 0:
                return
            await asyncio.sleep(self.interval_s)

    async def run_once(self) -> list[ReconciliationReport]:
        """Compare, apply the policy, publish a report per strategy when something differs (or at the first
        run); return the reports published."""
        bars = self.bars
        engine = bars.engine
        async with bars.trading:
            _, _, differences = await bars.venue_differences()
            ts_event = bars.clock.now_ns()
            adopted_results, left = ({}, differences)
            if differences and self.policy == "adopt":
                adopted_results, left = engine.adopt(differences, ts_event)
                if adopted_results:
                    await bars.publish(BatchResult(ts_event, adopted_results, []))
            first = self.runs == 0
            self.runs += 1
            if not differences and not first:
                return []
            reports = [self._report(sid, differences, adopted_results, left, ts_event)
                       for sid in engine.strategies()]
            for report in reports:
                await bars.publisher.send(subjects.reconciliation_reports(report.strategy), encode(report),
                                          {"Nats-Msg-Id": f"{report.strategy}:{ts_event}:reconciliation"})
            await bars.publisher.confirm(PUBLISH_TIMEOUT_S)
        for report in reports:
            self.reports[report.strategy] = report
            if report.action != "clean":
                log.warning("positions differ from the venue", extra={
                    "strategy": report.strategy, "action": report.action, "reason": report.reason})
        return reports

    def _report(self, sid: str, differences: list[tuple[str, float, float]], adopted_results: dict,
                left: list[tuple[str, float, float]], ts_event: int) -> ReconciliationReport:
        engine = self.bars.engine
        held = {symbol for host in engine.hosts.values() for symbol in host.portfolio.positions}
        mine = set(engine.hosts[sid].portfolio.positions)

        def concerns(rows: list[tuple[str, float, float]]) -> list[str]:
            """The symbols of `rows` that are this strategy's, or nobody's (then whose is unknown)."""
            return [s for s, _, _ in rows if s in mine or s not in held]

        took = {f.symbol for f in adopted_results[sid].fills} if sid in adopted_results else set()
        shown = "; ".join(f"{s}: books {b:g}, venue {v:g}" for s, b, v in differences)
        if not differences:
            action, reason = "clean", "the books agree with the venue"
        elif self.policy == "report":
            action, reason = "reported", f"positions differ at the venue ({shown})"
        elif concerns(left):
            action = "halt"
            reason = f"reconciliation: positions differ at the venue ({shown})"
            if self.policy == "adopt":
                reason += f"; not adopted (whose they are is unknown, or no price): {', '.join(concerns(left))}"
        elif took:
            action, reason = "adopted", f"adopted from the venue: {shown}"
        else:
            action, reason = "clean", f"the differences are other strategies' ({shown})"
        return ReconciliationReport(
            strategy=sid, venue=self.broker, policy=self.policy, action=action,  # type: ignore[arg-type]
            differences=[PositionDifference(symbol=s, booked=b, venue=v) for s, b, v in differences],
            adopted=[PositionDifference(symbol=s, booked=b, venue=v) for s, b, v in differences if s in took],
            reason=reason, ts_event=ts_event)
