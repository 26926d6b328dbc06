"""Broker commands over the bus: pin the REST broker to an endpoint, report the broker's status, check the venue."""

import logging
from collections.abc import Callable
from typing import Protocol

import msgspec

from qmp_core.clock import Clock
from qmp_core.messages import (
    BrokerCommand,
    BrokerReply,
    PositionDifference,
    codec,
)
from qmp_execution.engine.broker import Account
from qmp_execution.rest import BrokerUnavailable, RestBrokerClient

log = logging.getLogger(__name__)


class BrokerCommands:
    """Answer `qmp.broker.<instance>` requests: pin the REST broker to an endpoint, report the broker's
    status, or `check` the venue (its account, and the positions where the books and the venue disagree)."""

    def __init__(self, broker: str, clock: Clock, client: RestBrokerClient | None = None,
                 venue: Callable[[], "VenueCheck | None"] | None = None) -> None:
        self.broker = broker
        self.client = client
        self.clock = clock
        self._venue = venue
        self._decoder = codec(BrokerCommand)

    async def handle(self, data: bytes) -> BrokerReply:
        try:
            command = self._decoder.decode(data or b"{}")
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            return self._reply(False, f"invalid BrokerCommand: {error}")
        if command.command == "use_endpoint":
            if self.client is None:
                return self._reply(False, f"the {self.broker} broker has one endpoint")
            try:
                self.client.force(command.endpoint)
            except ValueError as error:
                return self._reply(False, str(error))
            log.warning("broker endpoint command", extra={"endpoint": command.endpoint, "by": command.issued_by,
                                                          "command_id": command.command_id})
        if command.command == "check":
            venue = self._venue() if self._venue is not None else None
            if venue is None:
                return self._reply(False, "execution is starting; try again")
            try:
                account, latency_ms, differences = await venue.check_venue()
            except BrokerUnavailable as error:
                return self._reply(False, f"the venue did not answer: {error}")
            except Exception as error:  # a diagnostic: whatever the venue or its SDK raised is the answer
                log.exception("venue check failed")
                return self._reply(False, f"the venue check failed: {error!r}"[:500])
            reply = self._reply(True, "")
            return msgspec.structs.replace(
                reply, account={"cash": account.cash, "equity": account.equity,
                                "buying_power": account.buying_power, "latency_ms": round(latency_ms, 2)},
                differences=[PositionDifference(symbol=s, booked=b, venue=v) for s, b, v in differences])
        return self._reply(True, "")

    def _reply(self, accepted: bool, reason: str) -> BrokerReply:
        if self.client is None:
            return BrokerReply(accepted=accepted, reason=reason, broker=self.broker, active=self.broker,
                               ts_event=self.clock.now_ns())
        status = self.client.status()
        return BrokerReply(accepted=accepted, reason=reason, broker=self.broker, active=status["active"],
                           forced=status["forced"], endpoints=status["endpoints"], ts_event=self.clock.now_ns())


class VenueCheck(Protocol):
    async def check_venue(self) -> tuple[Account, float, list[tuple[str, float, float]]]: ...
