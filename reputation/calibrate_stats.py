"""Exact binomial confidence bounds (Clopper–Pearson) for the calibration's rates.

    clopper_pearson_upper(0, 1500)          # 0.001995...: 1 - 0.05 ** (1 / 1500)
    clopper_pearson_interval(3, 1000)       # two-sided 95 %

Exact means the bound inverts the binomial distribution itself (no normal
approximation), so it holds for 0 successes and small n, which is where the
calibration lives. The inversion is a bisection on the CDF, summed in log space:
no scipy needed, and n up to a few hundred thousand costs milliseconds.
"""

from __future__ import annotations

import math

__all__ = ["binomial_cdf", "clopper_pearson_interval", "clopper_pearson_lower", "clopper_pearson_upper"]

_BISECTIONS = 80  # halvings of [0, 1]: far below float resolution of any rate reported


def _check(k: int, n: int, alpha: float) -> None:
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def clopper_pearson_upper(k: int, n: int, alpha: float = 0.05) -> float:
    """The one-sided (1 - alpha) upper bound on p after k successes in n trials: P(X <= k | p) = alpha."""
    _check(k, n, alpha)
    if k == n:
        return 1.0
    if k == 0:
        return 1.0 - math.pow(alpha, 1.0 / n)  # closed form of the same equation
    lo, hi = k / n, 1.0
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def clopper_pearson_lower(k: int, n: int, alpha: float = 0.05) -> float:
    """The one-sided (1 - alpha) lower bound on p: P(X >= k | p) = alpha."""
    _check(k, n, alpha)
    if k == 0:
        return 0.0
    # P(X >= k | p) = P(n - X <= n - k | 1 - p): the upper bound of the failures, mirrored.
    return 1.0 - clopper_pearson_upper(n - k, n, alpha)


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided exact interval: each side takes half of 1 - confidence."""
    alpha = (1.0 - confidence) / 2
    return clopper_pearson_lower(k, n, alpha), clopper_pearson_upper(k, n, alpha)
