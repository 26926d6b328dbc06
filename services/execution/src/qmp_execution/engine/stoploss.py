"""Stop-losses in force: a risk ClosePosition turned into a close of the whole position."""

from dataclasses import dataclass

from qmp_core.messages import (
    StopLossInForce,
)


@dataclass
class StopLoss:
    """A risk stop-loss in force on one symbol: its target is 0 until the position is flat."""

    command_id: str
    symbol: str
    reason: str  # "stop-loss: <detail> (command <id>)", carried by the close order
    ts_event: int  # of the ClosePosition
    order_id: str = ""  # the close order once accepted

    def to_message(self) -> StopLossInForce:
        return StopLossInForce(command_id=self.command_id, symbol=self.symbol, reason=self.reason,
                               ts_event=self.ts_event, order_id=self.order_id)

    @classmethod
    def from_message(cls, stop: StopLossInForce) -> "StopLoss":
        return cls(command_id=stop.command_id, symbol=stop.symbol, reason=stop.reason, ts_event=stop.ts_event,
                   order_id=stop.order_id)
