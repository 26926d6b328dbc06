"""VaR and ES backtests: exceptions, Kupiec POF, Christoffersen independence and conditional coverage,
the Basel traffic light, and Acerbi-Szekely Z2 for ES.

Input contract
- `realized`: 1-D float64 realized returns (P&L fractions; a loss is negative), and `var`, `es`: the
  forecasts made for them before they were seen (positive loss fractions), same length, aligned (the
  caller shifts: forecast t made with data up to t - 1). A row with any non-finite entry is skipped;
  Christoffersen's transitions count consecutive kept rows.
- `alpha`: the VaR level in (0, 1); p = 1 - alpha is the expected exception rate.
- `backtest_nb` returns a float64 array indexed by the BT_* constants and a status code; never raises.

Tests (x exceptions -r_t > VaR_t among n rows)
- Kupiec (1995) proportion of failures: LR_pof = -2 ln[(1-p)^(n-x) p^x] + 2 ln[(1-x/n)^(n-x) (x/n)^x],
  chi-square(1) under H0.
- Christoffersen (1998) independence: with n_ij the transitions from state i to j (1 = exception),
  pi_0 = n01 / (n00 + n01), pi_1 = n11 / (n10 + n11), pi = (n01 + n11) / (n00 + n01 + n10 + n11),
  LR_ind = -2 ln[(1-pi)^(n00+n10) pi^(n01+n11)] + 2 ln[(1-pi_0)^n00 pi_0^n01 (1-pi_1)^n10 pi_1^n11],
  chi-square(1); conditional coverage LR_cc = LR_pof + LR_ind, chi-square(2). 0 ln 0 = 0.
- Basel traffic light (BCBS 1996): the zone of x exceptions by the binomial(n, p) probability of at most
  x: green below 95%, yellow below 99.99%, red from there; at n = 250 and 99% that is green 0-4,
  yellow 5-9, red 10 or more.
- Acerbi-Szekely (2014) Z2 = sum_t r_t I_t / (n (1 - alpha) ES_t) + 1, I_t the VaR exception indicator;
  0 under a correct ES, negative when ES understates the tail. Zones from their significance
  thresholds (stable across tail shapes): green above -0.70 (5%), yellow above -1.8 (0.01%), red.
  Rows with ES_t <= 0 (a tail that is a gain) carry no information for Z2 and are left out of it.
"""

import math

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.special import binom_cdf_nb, chi2_sf_nb
from qmp_kernels.status import INSUFFICIENT_DATA, INVALID_ARGUMENT, OK

BT_N = 0
BT_EXCEPTIONS = 1
BT_EXPECTED = 2
BT_KUPIEC_LR = 3
BT_KUPIEC_P = 4
BT_IND_LR = 5
BT_IND_P = 6
BT_CC_LR = 7
BT_CC_P = 8
BT_ZONE = 9
BT_Z2 = 10
BT_Z2_ZONE = 11
BT_FIELDS = 12

ZONE_GREEN = 0
ZONE_YELLOW = 1
ZONE_RED = 2
ZONE_NAMES = ("green", "yellow", "red")


def backtest_record(fields: np.ndarray) -> dict[str, int | float | str | None]:
    """Return `backtest_nb`'s fields by name, as the bus's VarBacktest spells them (one mapping for all)."""
    z2 = float(fields[BT_Z2])
    finite = math.isfinite(z2)
    return {"observations": int(fields[BT_N]), "exceptions": int(fields[BT_EXCEPTIONS]),
            "expected": float(fields[BT_EXPECTED]), "kupiec_p": float(fields[BT_KUPIEC_P]),
            "christoffersen_p": float(fields[BT_IND_P]), "conditional_coverage_p": float(fields[BT_CC_P]),
            "zone": ZONE_NAMES[int(fields[BT_ZONE])], "es_z2": z2 if finite else None,
            "es_zone": ZONE_NAMES[int(fields[BT_Z2_ZONE])] if finite else ""}
BASEL_GREEN_BELOW = 0.95
BASEL_RED_FROM = 0.9999
Z2_YELLOW_AT = -0.70
Z2_RED_AT = -1.8


@njit("float64(float64, float64)", cache=True, error_model="numpy")
def _xlogy_nb(x: float, y: float) -> float:
    """Return x ln y with 0 ln 0 = 0."""
    if x == 0.0:
        return 0.0
    return x * math.log(y)


@njit("float64(int64, int64, float64)", cache=True, error_model="numpy")
def kupiec_lr_nb(exceptions: int, n: int, p: float) -> float:
    """Return Kupiec's proportion-of-failures likelihood ratio."""
    x = float(exceptions)
    rest = float(n - exceptions)
    observed = x / n
    null = _xlogy_nb(rest, 1.0 - p) + _xlogy_nb(x, p)
    fitted = _xlogy_nb(rest, 1.0 - observed) + _xlogy_nb(x, observed)
    return max(0.0, -2.0 * (null - fitted))


@njit("float64(int64, int64, int64, int64)", cache=True, error_model="numpy")
def christoffersen_lr_nb(n00: int, n01: int, n10: int, n11: int) -> float:
    """Return Christoffersen's independence likelihood ratio from the transition counts."""
    total = n00 + n01 + n10 + n11
    if total == 0:
        return 0.0
    pi = (n01 + n11) / total
    pi0 = n01 / (n00 + n01) if n00 + n01 > 0 else 0.0
    pi1 = n11 / (n10 + n11) if n10 + n11 > 0 else 0.0
    null = _xlogy_nb(float(n00 + n10), 1.0 - pi) + _xlogy_nb(float(n01 + n11), pi)
    fitted = (_xlogy_nb(float(n00), 1.0 - pi0) + _xlogy_nb(float(n01), pi0) + _xlogy_nb(float(n10), 1.0 - pi1)
              + _xlogy_nb(float(n11), pi1))
    return max(0.0, -2.0 * (null - fitted))


@njit("int64(int64, int64, float64)", cache=True, error_model="numpy")
def traffic_light_nb(exceptions: int, n: int, p: float) -> int:
    """Return the Basel zone (ZONE_GREEN, ZONE_YELLOW, ZONE_RED) of `exceptions` in n at rate p."""
    cumulative = binom_cdf_nb(exceptions, n, p)
    if cumulative < BASEL_GREEN_BELOW:
        return ZONE_GREEN
    if cumulative < BASEL_RED_FROM:
        return ZONE_YELLOW
    return ZONE_RED


@njit(cache=True, error_model="numpy")
def backtest_nb(realized: np.ndarray, var: np.ndarray, es: np.ndarray, alpha: float) -> tuple[np.ndarray, int]:
    """Return (BT_* fields, status) of the VaR and ES forecasts against the realized returns."""
    out = np.full(BT_FIELDS, np.nan)
    if not (0.0 < alpha < 1.0) or var.shape[0] != realized.shape[0] or es.shape[0] != realized.shape[0]:
        return out, INVALID_ARGUMENT
    p = 1.0 - alpha
    n = 0
    exceptions = 0
    n00 = 0
    n01 = 0
    n10 = 0
    n11 = 0
    previous = -1
    z2_sum = 0.0
    z2_n = 0
    for t in range(realized.shape[0]):
        r = realized[t]
        v = var[t]
        e = es[t]
        if not (math.isfinite(r) and math.isfinite(v) and math.isfinite(e)):
            continue
        hit = 1 if -r > v else 0
        n += 1
        exceptions += hit
        if previous == 0:
            if hit:
                n01 += 1
            else:
                n00 += 1
        elif previous == 1:
            if hit:
                n11 += 1
            else:
                n10 += 1
        previous = hit
        if e > 0.0:
            z2_n += 1
            if hit:
                z2_sum += r / e
    if n == 0:
        return out, INSUFFICIENT_DATA
    out[BT_N] = n
    out[BT_EXCEPTIONS] = exceptions
    out[BT_EXPECTED] = n * p
    out[BT_KUPIEC_LR] = kupiec_lr_nb(exceptions, n, p)
    out[BT_KUPIEC_P] = chi2_sf_nb(out[BT_KUPIEC_LR], 1.0)
    out[BT_IND_LR] = christoffersen_lr_nb(n00, n01, n10, n11)
    out[BT_IND_P] = chi2_sf_nb(out[BT_IND_LR], 1.0)
    out[BT_CC_LR] = out[BT_KUPIEC_LR] + out[BT_IND_LR]
    out[BT_CC_P] = chi2_sf_nb(out[BT_CC_LR], 2.0)
    out[BT_ZONE] = traffic_light_nb(exceptions, n, p)
    if z2_n > 0:
        z2 = z2_sum / (z2_n * p) + 1.0
        out[BT_Z2] = z2
        out[BT_Z2_ZONE] = ZONE_GREEN if z2 > Z2_YELLOW_AT else (ZONE_YELLOW if z2 > Z2_RED_AT else ZONE_RED)
    return out, OK
