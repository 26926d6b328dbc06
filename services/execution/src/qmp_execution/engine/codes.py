"""Reason codes of denied and cancelled orders, and the constants every engine module shares."""

WEIGHT_TOLERANCE = 1e-9

CODE_HALTED = "HALTED"
CODE_REDUCING = "REDUCING"
CODE_STRATEGY_ERROR = "STRATEGY_ERROR"
CODE_MAX_NOTIONAL = "MAX_NOTIONAL"
CODE_PRICE_BAND = "PRICE_BAND"
CODE_RATE_LIMIT = "RATE_LIMIT"
CODE_INSUFFICIENT_CASH = "INSUFFICIENT_CASH"
CODE_REPLACED = "REPLACED"
CODE_BROKER_REJECTED = "BROKER_REJECTED"
CODE_STOP_LOSS = "STOP_LOSS"

# How many ClosePosition command ids are remembered to recognise a redelivery.
CLOSE_IDS_KEPT = 4096

DEFAULT_ES_KEYS = ("evt_99", "student_t_99", "historical_99")
