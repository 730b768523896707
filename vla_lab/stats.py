"""Statistics used across the package, from statsmodels / scipy (nothing hand-written that they provide)."""

from __future__ import annotations

from vla_lab.errors import InputError


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``n`` is 0)."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise InputError(f"wilson_interval: got {successes} successes of {n}, expected 0 <= successes <= n")
    if n == 0:
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return float(low), float(high)
