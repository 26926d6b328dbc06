"""Broker commands over the bus: pin the REST broker to an endpoint, or report its status."""

import logging

import msgspec

from qmp_core.clock import Clock
from qmp_core.messages import (
    BrokerCommand,
    BrokerReply,
    codec,
)
from qmp_execution.rest import RestBrokerClient

log = logging.getLogger(__name__)


class BrokerCommands:
    """Answer `qmp.broker.<instance>` requests: pin the REST broker to an endpoint, or report its status."""

    def __init__(self, client: RestBrokerClient, clock: Clock) -> None:
        self.client = client
        self.clock = clock
        self._decoder = codec(BrokerCommand)

    def handle(self, data: bytes) -> BrokerReply:
        try:
            command = self._decoder.decode(data or b"{}")
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            return self._reply(False, f"invalid BrokerCommand: {error}")
        if command.command == "use_endpoint":
            try:
                self.client.force(command.endpoint)
            except ValueError as error:
                return self._reply(False, str(error))
            log.warning("broker endpoint command", extra={"endpoint": command.endpoint, "by": command.issued_by,
                                                          "command_id": command.command_id})
        return self._reply(True, "")

    def _reply(self, accepted: bool, reason: str) -> BrokerReply:
        status = self.client.status()
        return BrokerReply(accepted=accepted, reason=reason, active=status["active"], forced=status["forced"],
                           endpoints=status["endpoints"], ts_event=self.clock.now_ns())
