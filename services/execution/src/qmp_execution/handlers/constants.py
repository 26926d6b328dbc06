"""What every execution handler shares: the service name, timeouts, subject parsing, dead-letter ids."""

from qmp_core import subjects

SERVICE = "execution"
KV_DELETES = ("DEL", "PURGE")
INITIAL_STATE_TIMEOUT_S = 10.0
CATCH_UP_TIMEOUT_S = 2.0  # a replay batch waits at most this long for the control watch, then for risk
# Recovery scans the market-data stream backwards; this bounds the scan per window row needed.
SCAN_PER_ROW = 64

PUBLISH_TIMEOUT_S = 30.0
RISK_FETCH = 256


def venue_of(subject: str) -> str:
    """Return the venue token of `qmp.md.<venue>.bars`."""
    return subjects.strategy_of(subject, 2)


def letter_id(delivery_id: str) -> str | None:
    """Return the dead letter's Nats-Msg-Id for a delivery, so a redelivery's letter is a duplicate."""
    return f"{SERVICE}:{delivery_id}" if delivery_id else None
