"""The deployer's logic, synchronous and without I/O: control state (`control`), rollout plans (`plan`),
gate readings and evaluations (`gates`) and the phase machine (`rollout`). Clock and config are injected.
"""

from qmp_deployer.engine.control import (
    BatchDecision,
    ControlDecision,
    ControlRequest,
    decide,
    decide_in_order,
    entry_keys,
)

__all__ = ["BatchDecision", "ControlDecision", "ControlRequest", "decide", "decide_in_order", "entry_keys"]
