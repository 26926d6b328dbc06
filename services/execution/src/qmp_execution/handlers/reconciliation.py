"""Reconciliation of positions with the venue: at start and every `reconcile_interval_s`, execution's books
against the venue's account, and the configured policy applied to what differs.

Fills the venue made since the last batch are booked first (`BarHandler.venue_differences`), so only what
the books cannot explain is left: a position changed by hand at the broker, another system trading the
account, a fill lost for good. Each hosted strategy gets a `ReconciliationReport` on
`qmp.exec.<strategy>.reconciliation` with the differences and its action:
- `adopt`: a difference with one owner (see `ExecutionEngine.adopt`) is booked into that book (an adjustment
  fill at the last price, published with the book), and an unknown open order becomes a working order of
  the strategy (never "close everything at start"); what has no owner falls back to `halt`;
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
from qmp_execution.engine.broker import BrokerOrder
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
            ts_event = bars.clock.now_ns()
            # Unknown open orders first: once adopted, what they filled is booked from the venue's answer
            # by the reconciliation below, and does not show as a position difference as well.
            unknown = await self._unknown_orders()
            adopted_orders: dict[str, list[str]] = {}
            if self.policy == "adopt":  # the book with them (and their fills) goes out with the next batch
                adopted_orders = {sid: engine.adopt_orders(sid, orders, ts_event)[0]
                                  for sid, orders in unknown.items()}
            _, _, differences = await bars.venue_differences()
            adopted_results, left = ({}, differences)
            if differences and self.policy == "adopt":
                adopted_results, left = engine.adopt(differences, ts_event)
                if adopted_results:
                    await bars.publish(BatchResult(ts_event, adopted_results, []))
            first = self.runs == 0
            self.runs += 1
            if not differences and not unknown and not first:
                return []
            reports = [self._report(sid, differences, adopted_results, left, ts_event,
                                    [o.order_id for o in unknown.get(sid, [])], adopted_orders.get(sid, []))
                       for sid in engine.strategies()]
            for report in reports:
                await bars.publisher.send(subjects.reconciliation_reports(report.strategy), encode(report),
                                          {"Nats-Msg-Id": f"{report.strategy}:{ts_event}:reconciliation"})
            await bars.publisher.confirm(PUBLISH_TIMEOUT_S)
        for report in reports:
            self.reports[report.strategy] = report
            if report.action != "clean":
                log.warning("the books differ from the venue", extra={
                    "strategy": report.strategy, "action": report.action, "reason": report.reason})
        return reports

    async def _unknown_orders(self) -> dict[str, list[BrokerOrder]]:
        """Each strategy's open orders at the venue that its books do not know (a venue that cannot list its
        orders has none to show)."""
        found: dict[str, list[BrokerOrder]] = {}
        for sid in self.bars.engine.strategies():
            listed = await self.bars.venue_open_orders(sid)
            if listed is None:
                return {}
            known = {o.order_id for o in self.bars.engine.open_orders(sid)}
            unknown = [o for o in listed if o.order_id not in known]
            if unknown:
                found[sid] = unknown
        return found

    def _report(self, sid: str, differences: list[tuple[str, float, float]], adopted_results: dict,
                left: list[tuple[str, float, float]], ts_event: int, unknown: list[str],
                adopted_orders: list[str]) -> ReconciliationReport:
        engine = self.bars.engine
        held = {symbol for host in engine.hosts.values() for symbol in host.portfolio.positions}
        mine = set(engine.hosts[sid].portfolio.positions)

        def concerns(rows: list[tuple[str, float, float]]) -> list[str]:
            """The symbols of `rows` that are this strategy's, or nobody's (then whose is unknown)."""
            return [s for s, _, _ in rows if s in mine or s not in held]

        took = {f.symbol for f in adopted_results[sid].fills} if sid in adopted_results else set()
        not_taken = [order_id for order_id in unknown if order_id not in adopted_orders]
        shown = "; ".join(f"{s}: books {b:g}, venue {v:g}" for s, b, v in differences)
        found = []
        if differences:
            found.append(f"positions differ at the venue ({shown})")
        if unknown:
            found.append(f"open orders at the venue the books do not know: {', '.join(unknown)}")
        if not found:
            action, reason = "clean", "the books agree with the venue"
        elif self.policy == "report":
            action, reason = "reported", "; ".join(found)
        elif concerns(left) or not_taken:
            action = "halt"
            reason = f"reconciliation: {'; '.join(found)}"
            if self.policy == "adopt":
                why = ", ".join([*concerns(left), *not_taken])
                reason += f"; not adopted (whose it is is unknown, no price, or a working order there): {why}"
        elif took or adopted_orders:
            action, reason = "adopted", f"adopted from the venue: {'; '.join(found)}"
        else:
            action, reason = "clean", f"the differences are other strategies' ({shown})"
        return ReconciliationReport(
            strategy=sid, venue=self.broker, policy=self.policy, action=action,  # type: ignore[arg-type]
            differences=[PositionDifference(symbol=s, booked=b, venue=v) for s, b, v in differences],
            adopted=[PositionDifference(symbol=s, booked=b, venue=v) for s, b, v in differences if s in took],
            reason=reason, ts_event=ts_event, unknown_orders=unknown, adopted_orders=adopted_orders)
