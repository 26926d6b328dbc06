"""Slippage models of the paper broker: Almgren et al. (2005), the square-root law, and fixed bps.

`almgren` (default): half-spread + eta·sigma·participation^beta + half the permanent impact
gamma·sigma·(X/V)^alpha·(Theta/V)^delta, with the paper's coefficients (see `qmp_kernels.impact`).
`sqrt`: half-spread + Y·sigma·sqrt(participation), no permanent term. `fixed`: a constant `fixed_bps`.
sigma is the symbol's daily volatility, participation = fill size / (ADV × execution time in days).

Deterministic by default. With `noise_scale` > 0 the impact part is multiplied by a mean-one lognormal
factor drawn from a generator seeded by (`seed`, the caller's key): the same batch gives the same noise
after a restart.
"""

from typing import Annotated, Literal

import numpy as np
from msgspec import Meta, Struct

from qmp_kernels import impact
from qmp_kernels.status import NAMES, OK

BPS = 1e-4


class SlippageConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Coefficients of the paper broker's cost model; `qmp slippage calibrate` re-fits eta, beta, spread."""

    model: Literal["almgren", "sqrt", "fixed"] = "almgren"
    half_spread_bps: Annotated[float, Meta(ge=0.0)] = 2.0
    eta: Annotated[float, Meta(ge=0.0)] = impact.ETA
    beta: Annotated[float, Meta(gt=0.0, le=2.0)] = impact.BETA
    gamma: Annotated[float, Meta(ge=0.0)] = impact.GAMMA
    alpha: Annotated[float, Meta(gt=0.0, le=2.0)] = impact.ALPHA
    delta: Annotated[float, Meta(ge=0.0, le=2.0)] = impact.DELTA
    # Shares outstanding / average daily volume: 100 is a 1% daily turnover, typical of large caps.
    turnover_inverse: Annotated[float, Meta(gt=0.0)] = 100.0
    sqrt_y: Annotated[float, Meta(ge=0.0)] = impact.SQRT_LAW_Y
    fixed_bps: Annotated[float, Meta(ge=0.0)] = 5.0
    noise_scale: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.0
    seed: int = 0
    # Bars without volume (e.g. adjusted-close histories) still pay impact, at this participation.
    unknown_participation: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.01
    max_slippage_bps: Annotated[float, Meta(gt=0.0)] = 500.0


class SlippageModel:
    """Cost of fills as a fraction of the arrival price, for arrays of fills at once."""

    def __init__(self, config: SlippageConfig | None = None) -> None:
        self.config = config or SlippageConfig()

    def costs(self, quantity: np.ndarray, sigma: np.ndarray, adv: np.ndarray, exec_days: np.ndarray,
              noise_key: int = 0, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Return (cost fraction, participation) per fill; quantities may be signed (the sign is ignored).
        `noise=False` gives the model's prediction, without the configured noise."""
        c = self.config
        quantity = np.ascontiguousarray(quantity, dtype=np.float64)
        sigma = np.ascontiguousarray(sigma, dtype=np.float64)
        adv = np.ascontiguousarray(adv, dtype=np.float64)
        exec_days = np.ascontiguousarray(exec_days, dtype=np.float64)
        rate, _ = impact.participation_nb(quantity, adv, exec_days, c.unknown_participation)
        if c.model == "fixed":
            return np.full(quantity.shape[0], min(c.fixed_bps, c.max_slippage_bps) * BPS), rate
        if c.model == "sqrt":
            eta, beta, gamma = c.sqrt_y, 0.5, 0.0
        else:
            eta, beta, gamma = c.eta, c.beta, c.gamma
        draws = np.empty(0)
        if c.noise_scale > 0.0 and noise:
            draws = np.random.default_rng([c.seed, noise_key & 0xFFFFFFFFFFFF]).standard_normal(quantity.shape[0])
        cost, rate, code = impact.impact_cost_nb(
            quantity, sigma, adv, exec_days, c.half_spread_bps * BPS, eta, beta, gamma, c.alpha, c.delta,
            c.turnover_inverse, c.unknown_participation, c.max_slippage_bps * BPS, draws, c.noise_scale,
        )
        if code != OK:  # the config is validated at start, so this is a broken invariant
            raise ValueError(f"slippage model {c.model}: kernel returned {NAMES.get(code, code)}")
        return cost, rate

    def cost(self, quantity: float, sigma: float, adv: float, exec_days: float = 1.0) -> float:
        """Return the cost fraction of one fill (no noise): convenient for tests and reports."""
        costs, _ = self.costs(np.array([quantity]), np.array([sigma]), np.array([adv]), np.array([exec_days]))
        return float(costs[0])
