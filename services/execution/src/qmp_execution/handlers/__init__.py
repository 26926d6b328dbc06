"""Execution I/O: decode bars → engine → publish decisions, fills, snapshots; control watch; recovery.

No decisions are taken here. What every handler guarantees:
- input that cannot be used (undecodable, invalid batch, invalid rows) goes to `qmp.dlq.execution` with its
  reason and is acknowledged; only transient failures (bus, database) raise, so the message is redelivered;
- order events are published before fills, and the PortfolioSnapshot right after them on the same
  connection, so the stream stores it after them (without waiting per message; all acks confirmed
  together, `publisher.py`): a snapshot on the bus means everything before it is on the bus too, which
  is what recovery after a restart relies on. The fills, equity curve and positions are written to the
  database meanwhile (one statement), and the bars message is acknowledged once the acks and the write
  are both done; a restart writes the rows of the last snapshot's batch from the bus if they are missing
  (`recovery.write_missing_rows`);
- every publish carries a deterministic Nats-Msg-Id, so a redelivered batch (for which the engine returns
  its cached result) publishes nothing new.

Risk's stop-loss commands (`ClosePosition` on `qmp.risk.<strategy>.stoploss`) come through a durable pull
consumer on the risk stream (JetStream API and inbox only: no subscription right on `qmp.risk.>`); the
engine marks the position to close on the next batch, and applies a command id once.

What a venue pushes between batches (Alpaca's trade updates) is booked as it comes (`venue_updates`).
Operators' pre-trade limits come from the `qmp_limits` bucket (`limits_watch.LimitsWatch`), loaded before
the first batch; each strategy's rollout from the `qmp_rollouts` bucket (`rollout_watch.RolloutWatch`: the
deployment id on its orders, and whether its phase trades at this instance's venue). A kill in the control
bucket is acted on at once, between batches (`kill.KillSwitch`): working orders withdrawn at the venue,
positions optionally closed, and a `KillReport` published when the venue answered.
"""

from qmp_execution.handlers.bars import BarHandler
from qmp_execution.handlers.broker import BrokerCommands
from qmp_execution.handlers.constants import SERVICE
from qmp_execution.handlers.control_watch import ControlWatch
from qmp_execution.handlers.kill import KillSwitch
from qmp_execution.handlers.limits_watch import LimitsWatch
from qmp_execution.handlers.reconciliation import Reconciler
from qmp_execution.handlers.recovery import recover, write_missing_rows
from qmp_execution.handlers.risk_watch import RiskWatch
from qmp_execution.handlers.rollout_watch import RolloutWatch
from qmp_execution.handlers.stop_loss import StopLossAcks, StopLossHandler
from qmp_execution.handlers.venue_updates import VenueUpdates

__all__ = ["SERVICE", "BarHandler", "BrokerCommands", "ControlWatch", "KillSwitch", "LimitsWatch", "Reconciler",
           "RiskWatch", "RolloutWatch", "StopLossAcks", "StopLossHandler", "VenueUpdates", "recover",
           "write_missing_rows"]
