"""Special functions for the risk kernels: normal, Student-t, incomplete beta and gamma, chi-square.

Input contract
- Scalars in, scalars out; a point outside a function's domain gives NaN (never an exception).
- `nu` (Student-t degrees of freedom): the cdf and pdf take any nu > 0; the quantile takes nu >= 1 (the
  risk methods never fit fewer than 4) and treats nu = inf as the normal.

Methods (each checked against scipy.special / scipy.stats in the tests)
- Normal quantile: Acklam's rational approximation, then one Halley step on erfc, which brings it to
  full double precision.
- Regularized incomplete beta I_x(a, b): the continued fraction of Numerical Recipes (modified Lentz),
  on whichever of I_x(a, b) and 1 - I_{1-x}(b, a) converges; both x and 1 - x are passed in, so that the
  Student-t tails (x close to 0 or to 1) lose nothing to cancellation.
- Student-t cdf: F(t) = I_{nu/(nu+t^2)}(nu/2, 1/2) / 2 for t < 0, by symmetry above.
- Student-t quantile: Hill's (1970, CACM algorithm 396) closed-form start, then Newton steps on
  log F(t) = log p (well scaled in the far tail, where F varies over many decades). For nu >= 1e4 the
  Cornish-Fisher expansion of the t quantile in powers of 1/nu (Abramowitz-Stegun 26.7.5, four terms)
  is exact to double precision and replaces the iteration.
- log Gamma(x + 1/2) - log Gamma(x): math.lgamma below x = 100; above, the difference of the two
  Stirling series taken term by term, since lgamma(x) itself would carry an absolute error of
  ~1e-16 * x log x into a difference of order log x.
- Regularized upper incomplete gamma Q(a, x): series below x = a + 1, continued fraction above; the
  chi-square survival function is Q(k/2, x/2), with the closed forms for k = 1 (erfc) and k = 2 (exp).
"""

import math

import numpy as np

from qmp_kernels.cache import njit

SQRT_2 = math.sqrt(2.0)
SQRT_2PI = math.sqrt(2.0 * math.pi)
LOG_PI = math.log(math.pi)
EPS = 2.220446049250313e-16
TINY = 1e-300
MAX_ITERATIONS = 20_000
T_NU_EXPANSION = 1e4  # from here on the 1/nu expansion of the t quantile is exact to double precision

# Acklam's rational approximation of the normal quantile (relative error < 1.2e-9), refined below.
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425


# ---------------------------------------------------------------- normal
@njit(cache=True, error_model="numpy")
def norm_pdf_nb(x: float) -> float:
    """Return the standard normal density at x."""
    return math.exp(-0.5 * x * x) / SQRT_2PI


@njit(cache=True, error_model="numpy")
def norm_cdf_nb(x: float) -> float:
    """Return Phi(x), accurate in both tails (erfc, no 1 - small cancellation)."""
    return 0.5 * math.erfc(-x / SQRT_2)


@njit(cache=True, error_model="numpy")
def _norm_ppf_lower_nb(p: float) -> float:
    """Return Phi^-1(p) for 0 < p <= 0.5."""
    if p < _P_LOW:
        r = math.sqrt(-2.0 * math.log(p))
        x = (((((_C[0] * r + _C[1]) * r + _C[2]) * r + _C[3]) * r + _C[4]) * r + _C[5]) / (
            (((_D[0] * r + _D[1]) * r + _D[2]) * r + _D[3]) * r + 1.0)
    else:
        r = p - 0.5
        s = r * r
        x = (((((_A[0] * s + _A[1]) * s + _A[2]) * s + _A[3]) * s + _A[4]) * s + _A[5]) * r / (
            ((((_B[0] * s + _B[1]) * s + _B[2]) * s + _B[3]) * s + _B[4]) * s + 1.0)
    # One Halley step on Phi(x) - p brings the approximation to full double precision; in the lower
    # half Phi(x) = erfc(-x / sqrt 2) / 2 has no cancellation.
    error = 0.5 * math.erfc(-x / SQRT_2) - p
    u = error * SQRT_2PI * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


@njit(cache=True, error_model="numpy")
def norm_ppf_nb(p: float) -> float:
    """Return the standard normal quantile Phi^-1(p) (NaN outside (0, 1)); accurate to ~1e-15."""
    if not (0.0 < p < 1.0):
        return np.nan
    if p > 0.5:
        # 1 - p is exact for p in [0.5, 1], so symmetry loses nothing.
        return -_norm_ppf_lower_nb(1.0 - p)
    return _norm_ppf_lower_nb(p)


# ---------------------------------------------------------------- gamma and beta
@njit(cache=True, error_model="numpy")
def lgamma_half_ratio_nb(x: float) -> float:
    """Return log Gamma(x + 1/2) - log Gamma(x) for x > 0, without cancellation for large x."""
    if not (x > 0.0):
        return np.nan
    if x < 100.0:
        return math.lgamma(x + 0.5) - math.lgamma(x)
    # Stirling: lgamma(z) = (z - 1/2) log z - z + log(2 pi)/2 + sum B_2k / (2k (2k-1) z^(2k-1)).
    y = x + 0.5
    main = x * math.log1p(0.5 / x) + 0.5 * math.log(x) - 0.5
    series = ((1.0 / y - 1.0 / x) / 12.0 - (1.0 / y**3 - 1.0 / x**3) / 360.0
              + (1.0 / y**5 - 1.0 / x**5) / 1260.0)
    return main + series


@njit(cache=True, error_model="numpy")
def _log_beta_nb(a: float, b: float) -> float:
    if b == 0.5:
        return math.lgamma(0.5) - lgamma_half_ratio_nb(a)
    if a == 0.5:
        return math.lgamma(0.5) - lgamma_half_ratio_nb(b)
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@njit(cache=True, error_model="numpy")
def _beta_continued_fraction_nb(a: float, b: float, x: float) -> float:
    """Return the continued fraction of I_x(a, b) (Numerical Recipes `betacf`, modified Lentz)."""
    qab = a + b
    qap = a + 1.0
    qam = a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < TINY:
        d = TINY
    d = 1.0 / d
    h = d
    for m in range(1, MAX_ITERATIONS + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < TINY:
            d = TINY
        c = 1.0 + aa / c
        if abs(c) < TINY:
            c = TINY
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < TINY:
            d = TINY
        c = 1.0 + aa / c
        if abs(c) < TINY:
            c = TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < EPS:
            break
    return h


@njit(cache=True, error_model="numpy")
def betainc_xy_nb(a: float, b: float, x: float, y: float) -> float:
    """Return I_x(a, b) given x and y = 1 - x, each computed by the caller without cancellation."""
    if not (a > 0.0 and b > 0.0) or not (0.0 <= x <= 1.0) or not (0.0 <= y <= 1.0):
        return np.nan
    if x == 0.0:
        return 0.0
    if y == 0.0:
        return 1.0
    # log of whichever of x, y is nearer 1 comes from the other through log1p: a large exponent would
    # otherwise multiply the rounding of a number close to 1.
    log_x = math.log1p(-y) if x > 0.5 else math.log(x)
    log_y = math.log1p(-x) if y > 0.5 else math.log(y)
    log_front = a * log_x + b * log_y - _log_beta_nb(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction_nb(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction_nb(b, a, y) / b


@njit(cache=True, error_model="numpy")
def betainc_nb(a: float, b: float, x: float) -> float:
    """Return the regularized incomplete beta function I_x(a, b)."""
    return betainc_xy_nb(a, b, x, 1.0 - x)


@njit(cache=True, error_model="numpy")
def gammaincc_nb(a: float, x: float) -> float:
    """Return the regularized upper incomplete gamma function Q(a, x) = Gamma(a, x) / Gamma(a)."""
    if not (a > 0.0) or not (x >= 0.0):
        return np.nan
    if x == 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = 1.0 / a
        total = term
        ap = a
        for _ in range(MAX_ITERATIONS):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * EPS:
                break
        return 1.0 - total * math.exp(log_front)
    b = x + 1.0 - a
    c = 1.0 / TINY
    d = 1.0 / b
    h = d
    for i in range(1, MAX_ITERATIONS + 1):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < TINY:
            d = TINY
        c = b + an / c
        if abs(c) < TINY:
            c = TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < EPS:
            break
    return math.exp(log_front) * h


@njit(cache=True, error_model="numpy")
def chi2_sf_nb(x: float, k: float) -> float:
    """Return P(X > x) for X chi-square with k degrees of freedom (the p-value of a likelihood ratio)."""
    if not (k > 0.0) or math.isnan(x):
        return np.nan
    if x <= 0.0:
        return 1.0
    if k == 1.0:
        return math.erfc(math.sqrt(0.5 * x))
    if k == 2.0:
        return math.exp(-0.5 * x)
    return gammaincc_nb(0.5 * k, 0.5 * x)


# ---------------------------------------------------------------- Student-t
@njit(cache=True, error_model="numpy")
def t_log_norm_nb(nu: float) -> float:
    """Return log of the t density's constant Gamma((nu+1)/2) / (sqrt(nu pi) Gamma(nu/2))."""
    return lgamma_half_ratio_nb(0.5 * nu) - 0.5 * (math.log(nu) + LOG_PI)


@njit(cache=True, error_model="numpy")
def t_pdf_nb(x: float, nu: float) -> float:
    """Return the standard Student-t density with nu degrees of freedom at x (normal for nu = inf)."""
    if not (nu > 0.0) or math.isnan(x):
        return np.nan
    if math.isinf(nu):
        return norm_pdf_nb(x)
    return math.exp(t_log_norm_nb(nu) - 0.5 * (nu + 1.0) * math.log1p(x * x / nu))


@njit(cache=True, error_model="numpy")
def t_cdf_nb(x: float, nu: float) -> float:
    """Return the standard Student-t distribution function with nu degrees of freedom at x."""
    if not (nu > 0.0) or math.isnan(x):
        return np.nan
    if math.isinf(nu):
        return norm_cdf_nb(x)
    if x == 0.0:
        return 0.5
    if math.isinf(x):
        return 0.0 if x < 0.0 else 1.0
    x2 = x * x
    lower = 0.5 * betainc_xy_nb(0.5 * nu, 0.5, nu / (nu + x2), x2 / (nu + x2))
    return lower if x < 0.0 else 1.0 - lower


@njit(cache=True, error_model="numpy")
def _t_quantile_expansion_nb(z: float, nu: float) -> float:
    """Return the t quantile from the normal one z by the 1/nu expansion (A&S 26.7.5)."""
    z2 = z * z
    g1 = (z2 + 1.0) * z / 4.0
    g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0
    g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0
    g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0
    u = 1.0 / nu
    return z + u * (g1 + u * (g2 + u * (g3 + u * g4)))


@njit(cache=True, error_model="numpy")
def _t_hill_start_nb(two_sided: float, nu: float) -> float:
    """Return Hill's (1970) approximation of |t| with P(|T| > |t|) = two_sided, for nu >= 1."""
    if nu == 1.0:
        return 1.0 / math.tan(0.5 * math.pi * two_sided)
    if nu == 2.0:
        return math.sqrt(2.0 / (two_sided * (2.0 - two_sided)) - 2.0)
    a = 1.0 / (nu - 0.5)
    b = 48.0 / (a * a)
    c = ((20700.0 * a / b - 98.0) * a - 16.0) * a + 96.36
    d = ((94.5 / (b + c) - 3.0) / b + 1.0) * math.sqrt(a * math.pi / 2.0) * nu
    y = (d * two_sided) ** (2.0 / nu)
    if y > 0.05 + a:
        x = norm_ppf_nb(0.5 * two_sided)
        y = x * x
        if nu < 5.0:
            c += 0.3 * (nu - 4.5) * (x + 0.6)
        c = (((0.05 * d * x - 5.0) * x - 7.0) * x - 2.0) * x + b + c
        y = (((((0.4 * y + 6.3) * y + 36.0) * y + 94.5) / c - y - 3.0) / b + 1.0) * x
        y = math.expm1(a * y * y)
    else:
        y = ((1.0 / (((nu + 6.0) / (nu * y) - 0.089 * d - 0.822) * (nu + 2.0) * 3.0) + 0.5 / (nu + 4.0))
             * y - 1.0) * (nu + 1.0) / (nu + 2.0) + 1.0 / y
    return math.sqrt(nu * y)


@njit(cache=True, error_model="numpy")
def t_ppf_nb(p: float, nu: float) -> float:
    """Return the Student-t quantile F^-1(p) with nu >= 1 degrees of freedom (NaN outside the domain)."""
    if not (0.0 < p < 1.0) or not (nu >= 1.0):
        return np.nan
    if p == 0.5:
        return 0.0
    if math.isinf(nu):
        return norm_ppf_nb(p)
    lower = p < 0.5
    tail = p if lower else 1.0 - p
    if nu >= T_NU_EXPANSION:
        t = _t_quantile_expansion_nb(norm_ppf_nb(tail), nu)
        return t if lower else -t
    t = -_t_hill_start_nb(2.0 * tail, nu)
    log_tail = math.log(tail)
    log_norm = t_log_norm_nb(nu)
    for _ in range(60):
        cdf = t_cdf_nb(t, nu)
        pdf = math.exp(log_norm - 0.5 * (nu + 1.0) * math.log1p(t * t / nu))
        if not (cdf > 0.0) or not (pdf > 0.0):
            break
        step = (math.log(cdf) - log_tail) * cdf / pdf
        candidate = t - step
        if not (candidate < 0.0):
            candidate = 0.5 * t  # log F is convex in t < 0: never cross the median
        if abs(candidate - t) <= 4.0 * EPS * abs(t):
            t = candidate
            break
        t = candidate
    return t if lower else -t


@njit(cache=True, error_model="numpy")
def t_standardized_var_es_nb(alpha: float, nu: float) -> tuple[float, float]:
    """Return (q, e): VaR and ES multipliers of a unit-variance Student-t at level alpha (nu > 2).

    q = sqrt((nu-2)/nu) t_nu^-1(alpha) and e = sqrt((nu-2)/nu) f_nu(t) (nu + t^2) / ((nu - 1)(1 - alpha)),
    t = t_nu^-1(alpha); so VaR = std * q - mean and ES = std * e - mean. nu = inf gives the normal ones.
    """
    if not (0.0 < alpha < 1.0) or not (nu > 2.0):
        return np.nan, np.nan
    if math.isinf(nu):
        z = norm_ppf_nb(alpha)
        return z, norm_pdf_nb(z) / (1.0 - alpha)
    t = t_ppf_nb(alpha, nu)
    scale = math.sqrt((nu - 2.0) / nu)
    density = math.exp(t_log_norm_nb(nu) - 0.5 * (nu + 1.0) * math.log1p(t * t / nu))
    return scale * t, scale * density * (nu + t * t) / ((nu - 1.0) * (1.0 - alpha))


@njit("float64(int64, int64, float64)", cache=True, error_model="numpy")
def binom_cdf_nb(k: int, n: int, p: float) -> float:
    """Return P(X <= k) for X binomial(n, p), summing the pmf in log space."""
    if n < 0 or not (0.0 <= p <= 1.0):
        return np.nan
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p == 0.0:
        return 1.0
    if p == 1.0:
        return 0.0
    total = 0.0
    log_p = math.log(p)
    log_q = math.log1p(-p)
    log_n = math.lgamma(n + 1.0)
    for i in range(k + 1):
        total += math.exp(log_n - math.lgamma(i + 1.0) - math.lgamma(n - i + 1.0) + i * log_p + (n - i) * log_q)
    return min(total, 1.0)
