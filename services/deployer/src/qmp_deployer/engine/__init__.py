"""The deployer's logic, synchronous and without I/O: control state (`control`), pre-trade limits (`limits`),
rollout plans (`plan`), gate readings and evaluations (`gates`) and the phase machine (`rollout`). Clock and
config are injected.
"""

from qmp_deployer.engine.control import (
    BatchDecision,
    ControlDecision,
    ControlRequest,
    decide,
    decide_in_order,
    entry_keys,
)
from qmp_deployer.engine.limits import LimitsDecision, decide_limits

__all__ = ["BatchDecision", "ControlDecision", "ControlRequest", "LimitsDecision", "decide", "decide_in_order",
           "decide_limits", "entry_keys"]
