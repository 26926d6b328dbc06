"""Sizing by Expected Shortfall: how far a strategy's target exposure is scaled down to keep its ES budget.

The projected ES of the target book is the latest RiskSnapshot's ES (the first of `es_keys` it holds,
finite and positive) scaled from the current gross exposure to the target's: ES x target / current.
Above the budget, every target weight is scaled by budget / projected ES; at or below it, nothing changes.
The key that bound travels on each accepted order (`OrderAccepted.es_key`).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from qmp_core.messages import RiskSnapshot

GROSS_EPSILON = 1e-9  # below this the book is flat: no ES to project from


@dataclass(frozen=True)
class EsScale:
    scale: float = 1.0  # in (0, 1]
    note: str = ""  # for the accepted orders' reason
    key: str = ""  # the ES key that bound, "" when ES did not scale the target


def es_scale(snapshot: RiskSnapshot | None, es_keys: Sequence[str], budget: float, target_gross: float,
             current_gross: float) -> EsScale:
    """Return the scale keeping the projected ES within `budget` (a fraction of equity; 0 turns it off).

    `target_gross` and `current_gross` are gross exposures as fractions of equity.
    """
    if budget <= 0.0 or snapshot is None or target_gross <= 0.0:
        return EsScale()
    key = next((k for k in es_keys if math.isfinite(snapshot.es.get(k, math.nan)) and snapshot.es[k] > 0.0), None)
    if key is None or current_gross <= GROSS_EPSILON:
        return EsScale()
    projected = snapshot.es[key] / current_gross * target_gross
    if projected <= budget:
        return EsScale()
    return EsScale(budget / projected, f"ES {key} projected {projected:.2%} > budget {budget:.2%}", key)
