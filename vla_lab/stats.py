"""Statistics used across the package, from statsmodels / scipy (nothing hand-written that they provide)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

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


def _finite(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all():
        raise InputError(f"{what}: got non-finite values, expected finite numbers (drop missing scenes first)")
    return array


def bootstrap_interval(
    values: Any, statistic: str = "mean", confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval (``scipy.stats.bootstrap``, BCa) of the mean or median of per-scene values.

    Resampling is over the values (one per scene). Identical values give the degenerate interval
    ``(v, v)``; fewer than two values give ``(nan, nan)``.
    """
    import scipy.stats

    array = _finite(values, "bootstrap_interval")
    if statistic not in ("mean", "median"):
        raise InputError(f"statistic: got {statistic!r}, expected 'mean' or 'median'")
    if array.size < 2:
        return math.nan, math.nan
    if np.all(array == array[0]):
        return float(array[0]), float(array[0])
    func = np.mean if statistic == "mean" else np.median
    result = scipy.stats.bootstrap((array,), func, confidence_level=confidence, n_resamples=n_resamples,
                                   method="BCa", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def ratio_of_means_interval(
    numerators: Any, denominators: Any, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval of ``mean(numerators) / mean(denominators)``, resampling scenes (pairs) together.

    Percentile method (``scipy.stats.bootstrap`` with ``paired=True``): BCa's jackknife is unreliable for a
    ratio whose denominator can come close to zero. Fewer than two scenes give ``(nan, nan)``.
    """
    import scipy.stats

    num = _finite(numerators, "ratio_of_means_interval")
    den = _finite(denominators, "ratio_of_means_interval")
    if num.size != den.size:
        raise InputError(f"ratio_of_means_interval: got {num.size} numerators and {den.size} denominators, "
                         "expected one pair per scene")
    if num.size < 2:
        return math.nan, math.nan

    def ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(np.mean(a, axis=axis) / np.mean(b, axis=axis))

    with np.errstate(divide="ignore", invalid="ignore"):
        result = scipy.stats.bootstrap((num, den), ratio, paired=True, vectorized=True,
                                       confidence_level=confidence, n_resamples=n_resamples,
                                       method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


@dataclass(frozen=True)
class PairedTest:
    """A paired test: ``name``, its ``statistic`` and two-sided ``p``, the number of pairs ``n`` and a ``note``."""

    name: str
    statistic: float
    p: float
    n: int
    note: str = ""


def cluster_mean_interval(values: Any, clusters: Any, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-episode ``values`` whose episodes cluster (e.g. a LIBERO task's init
    states): clusters are resampled, each as its sum over its count, so the ratio of means is the episodes' mean
    (:func:`ratio_of_means_interval`; clusters in sorted order)."""
    import pandas as pd

    table = pd.DataFrame({"value": np.asarray(values, dtype=float), "cluster": list(clusters)})
    sums = table.groupby("cluster", sort=True)["value"].agg(["sum", "count"])
    return ratio_of_means_interval(sums["sum"], sums["count"], seed=seed)


def mcnemar_exact(a: Any, b: Any) -> PairedTest:
    """Exact McNemar test (statsmodels) of paired binary outcomes, e.g. success of the same scenes
    under two conditions. ``statistic`` is the smaller discordant count."""
    from statsmodels.stats.contingency_tables import mcnemar

    x = np.asarray(a, dtype=bool).ravel()
    y = np.asarray(b, dtype=bool).ravel()
    if x.size != y.size:
        raise InputError(f"mcnemar_exact: got {x.size} and {y.size} outcomes, expected one pair per scene")
    table = [[int(np.sum(x & y)), int(np.sum(x & ~y))], [int(np.sum(~x & y)), int(np.sum(~x & ~y))]]
    result = mcnemar(table, exact=True)
    note = f"discordant pairs: {table[0][1]} (first only) / {table[1][0]} (second only)"
    return PairedTest("exact McNemar", float(result.statistic), float(result.pvalue), int(x.size), note)


def wilcoxon_signed_rank(a: Any, b: Any) -> PairedTest:
    """Wilcoxon signed-rank test (scipy, two-sided) of paired per-scene values ``a`` vs ``b``.

    When every difference is zero there is nothing to test: ``p`` is 1 and the note says so.
    """
    import scipy.stats

    x = _finite(a, "wilcoxon_signed_rank")
    y = _finite(b, "wilcoxon_signed_rank")
    if x.size != y.size:
        raise InputError(f"wilcoxon_signed_rank: got {x.size} and {y.size} values, expected one pair per scene")
    differences = x - y
    nonzero = int(np.count_nonzero(differences))
    if nonzero == 0:
        return PairedTest("Wilcoxon signed-rank", 0.0, 1.0, int(x.size), "every difference is zero")
    result = scipy.stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return PairedTest("Wilcoxon signed-rank", float(result.statistic), float(result.pvalue), int(x.size),
                      f"{nonzero} non-zero differences")


def sign_test(successes: int, n: int, p: float = 0.5) -> PairedTest:
    """Exact two-sided binomial (sign) test of ``successes`` of ``n`` against ``p`` (scipy)."""
    import scipy.stats

    if n < 1 or not 0 <= successes <= n:
        raise InputError(f"sign_test: got {successes} of {n}, expected 0 <= successes <= n, n >= 1")
    result = scipy.stats.binomtest(successes, n, p)
    return PairedTest("sign test", float(successes), float(result.pvalue), int(n), f"{successes} of {n} against {p}")


@dataclass(frozen=True)
class LogitFit:
    """A logistic regression of a binary outcome on one feature: the slope (log-odds per unit of the feature),
    its 95 % interval and two-sided ``p`` from cluster-robust standard errors, ``n`` rows, ``n_clusters``, the
    number of ``events`` (outcome 1) and a ``note`` (why nothing was estimated, when it was not)."""

    slope: float
    ci95: tuple[float, float]
    p: float
    n: int
    n_clusters: int
    events: int
    note: str = ""


def logistic_regression_clustered(feature: Any, outcome: Any, clusters: Any) -> LogitFit:
    """Logit(outcome) = a + b * feature (statsmodels ``Logit``) with standard errors clustered by ``clusters``
    (episodes of a task are not independent; statsmodels' small-sample correction, and t with clusters - 1 degrees
    of freedom for the interval and p). Not estimated (NaNs and a note) when the outcome does not vary, the feature
    does not vary, there are fewer than 3 clusters, or the fit separates the outcomes perfectly."""
    import statsmodels.api as sm

    x = _finite(feature, "logistic_regression_clustered")
    y = np.asarray(outcome, dtype=float).ravel()
    groups = np.asarray(_codes(clusters))
    if not (x.size == y.size == groups.size):
        raise InputError(f"logistic_regression_clustered: got {x.size} features, {y.size} outcomes and "
                         f"{groups.size} clusters, expected one of each per row")
    events, n_clusters = int(y.sum()), int(np.unique(groups).size)
    blank = LogitFit(math.nan, (math.nan, math.nan), math.nan, int(x.size), n_clusters, events)
    if events in (0, x.size):
        return replace(blank, note=f"outcome constant ({events} events of {x.size})")
    if np.ptp(x) == 0:
        return replace(blank, note="feature constant")
    if n_clusters < 3:
        return replace(blank, note=f"not estimable: {n_clusters} clusters, expected at least 3")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = sm.Logit(y, sm.add_constant(x)).fit(disp=0, cov_type="cluster", cov_kwds={"groups": groups},
                                                      use_t=True)
        except Exception as exc:  # statsmodels raises PerfectSeparationError (or warns and diverges)
            return replace(blank, note=f"not estimable: {type(exc).__name__}")
    slope, (low, high), p = float(fit.params[1]), fit.conf_int()[1], float(fit.pvalues[1])
    if not fit.mle_retvals.get("converged", True) or not np.isfinite([slope, low, high, p]).all():
        return replace(blank, note="not estimable: the fit did not converge (separation)")
    return LogitFit(slope, (float(low), float(high)), p, int(x.size), n_clusters, events,
                    f"cluster-robust SE over {n_clusters} clusters")


def _codes(values: Any) -> np.ndarray:
    """Integer codes of arbitrary cluster labels."""
    _, codes = np.unique(np.asarray(list(values), dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64)
