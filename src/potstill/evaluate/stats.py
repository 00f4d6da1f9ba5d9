"""Statistics of an evaluation: paired bootstrap confidence intervals and McNemar's test.

Every model answers the *same* prompts, so comparisons are paired: a bootstrap resample draws
prompt indices once and applies them to every model, and the student - teacher difference (and
``% of teacher``, ``gap recovered``) is computed inside each resample.

* :func:`paired_bootstrap` - percentile intervals (default 95%) from ``samples`` resamples of the
  prompts with replacement, drawn with ``numpy.random.default_rng(seed)`` (reproducible), chunked
  so memory stays ``O(chunk * n)``. For a mean it agrees with
  ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` up to Monte-Carlo noise (the
  tests check this). Percentile intervals are used (not BCa) because binary scores with all-equal
  values make BCa undefined; a degenerate sample gives a zero-width interval.
* :func:`paired_difference` - one model against another (e.g. KD - SFT): the interval of the mean
  difference and of the difference in points of ``% of teacher``, from the same paired resamples.
* :func:`mcnemar` - McNemar's test for two paired binary score vectors: the exact two-sided
  binomial p-value on the discordant pairs (``scipy.stats.binomtest(b, b + c, 0.5)``; equals
  ``statsmodels``' ``mcnemar(table, exact=True)``) and the mid-p value
  (exact p - P(X = min(b, c)), Fagerland, Lydersen & Laake 2013), which is less conservative.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

LEVEL = 0.95


def is_binary(values: Sequence[float]) -> bool:
    """True when every value is 0 or 1 (and there is at least one)."""
    arr = np.asarray(values, dtype=float)
    return arr.size > 0 and bool(np.all((arr == 0) | (arr == 1)))


def resample_indices(n: int, samples: int, seed: int = 0, chunk: int = 1000) -> Iterator[np.ndarray]:
    """Bootstrap index matrices ``[k, n]`` (k <= chunk, ``samples`` rows in all), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        yield rng.integers(0, n, size=(k, n), dtype=np.int64 if n > 2**31 - 1 else np.int32)
        done += k


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    """Percentile interval of the finite values; None when fewer than half are finite."""
    ok = values[np.isfinite(values)]
    if ok.size == 0 or ok.size < values.size / 2:
        return None
    alpha = (1 - level) / 2
    lo, hi = np.quantile(ok, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def resampled_means(scores: dict[str, Sequence[float]], samples: int = 10_000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per model, the mean score in each of ``samples`` paired resamples (the same indices for every model)."""
    arrays = {k: np.asarray(v, dtype=float) for k, v in scores.items()}
    lengths = {a.size for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"paired scores must have one length, got {sorted(lengths)}")
    n = lengths.pop()
    if n == 0:
        raise ValueError("no scores to resample")
    out = {k: [] for k in arrays}
    for idx in resample_indices(n, samples, seed):
        for k, a in arrays.items():
            out[k].append(a[idx].mean(axis=1))
    return {k: np.concatenate(v) for k, v in out.items()}


def bootstrap_ci(
    values: Sequence[float], samples: int = 10_000, seed: int = 0, level: float = LEVEL
) -> list[float] | None:
    """Percentile bootstrap interval ``[lo, hi]`` of the mean of ``values`` (None when empty)."""
    if len(values) == 0:
        return None
    return _interval(resampled_means({"x": values}, samples, seed)["x"], level)


def paired_diff_ci(
    a: Sequence[float], b: Sequence[float], samples: int = 10_000, seed: int = 0, level: float = LEVEL
) -> list[float] | None:
    """Percentile paired-bootstrap interval of ``mean(a) - mean(b)`` (a, b scored on the same items)."""
    return paired_difference(a, b, samples=samples, seed=seed, level=level)["diff"]


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    reference: Sequence[float] | None = None,
    samples: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, list[float] | None]:
    """Paired percentile intervals of ``mean(a) - mean(b)`` and of ``100 * (mean(a) - mean(b)) / mean(reference)``.

    ``a``, ``b`` (and ``reference``, e.g. the teacher) are scored on the same items; one set of resample
    indices serves all three, so with the same ``seed`` these intervals come from the very resamples
    :func:`paired_bootstrap` uses. The second is the difference in points of ``% of reference``
    (``pct_of_teacher(a) - pct_of_teacher(b)``). Returns ``{"diff": [lo, hi] | None, "pct_points": [lo, hi] |
    None}``: None when there are no items, without a reference, or when the reference mean is 0 in more
    than half of the resamples. Identical ``a`` and ``b`` give ``[0.0, 0.0]``.
    """
    if len(a) == 0:
        return {"diff": None, "pct_points": None}
    scores = {"a": a, "b": b} if reference is None else {"a": a, "b": b, "ref": reference}
    m = resampled_means(scores, samples, seed)
    d = m["a"] - m["b"]
    pct = None
    if reference is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            pct = _interval(np.where(m["ref"] != 0, 100 * d / m["ref"], np.nan), level)
    return {"diff": _interval(d, level), "pct_points": pct}


def paired_bootstrap(
    scores: dict[str, Sequence[float]],
    teacher: str,
    floor: str | None = None,
    samples: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, dict]:
    """Paired percentile intervals for every model against ``teacher`` (and ``floor``).

    Returns ``{model: {"score": [lo, hi], "diff_vs_teacher": [lo, hi], "pct_of_teacher": [lo, hi],
    "gap_recovered": [lo, hi] | None}}``: the mean score, mean(model) - mean(teacher),
    100 * mean(model) / mean(teacher) and (mean(model) - mean(floor)) / (mean(teacher) - mean(floor)),
    each computed inside every resample. An interval is None when it is undefined in more than half
    of the resamples (e.g. a teacher mean of 0); ``gap_recovered`` is None without a floor.
    """
    if not scores or len(next(iter(scores.values()))) == 0:
        return {
            k: {"score": None, "diff_vs_teacher": None, "pct_of_teacher": None, "gap_recovered": None} for k in scores
        }
    means = resampled_means(scores, samples, seed)
    t = means[teacher]
    f = means.get(floor) if floor else None
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, m in means.items():
            out[name] = {
                "score": _interval(m, level),
                "diff_vs_teacher": _interval(m - t, level),
                "pct_of_teacher": _interval(np.where(t != 0, 100 * m / t, np.nan), level),
                "gap_recovered": _interval(np.where(t - f != 0, (m - f) / (t - f), np.nan), level)
                if f is not None
                else None,
            }
    return out


def mcnemar(a: Sequence[float], b: Sequence[float]) -> dict:
    """McNemar's test for paired binary outcomes ``a`` (e.g. a student) and ``b`` (the teacher).

    Returns ``{"a_only": n01, "b_only": n10, "discordant": n, "p_exact": float, "p_midp": float}``:
    ``a_only`` counts items right in ``a`` and wrong in ``b``; the exact p-value is the two-sided
    binomial test of ``a_only`` out of the discordant pairs at 0.5, the mid-p value subtracts the
    probability of the observed (smaller) count. With no discordant pairs, or ``a_only == b_only``,
    both are 1.
    """
    from scipy.stats import binom, binomtest  # defers scipy

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError("mcnemar needs two score vectors of one length")
    if not (is_binary(x) and is_binary(y)):
        raise ValueError("mcnemar needs binary (0/1) scores")
    a_only = int(np.sum((x == 1) & (y == 0)))
    b_only = int(np.sum((x == 0) & (y == 1)))
    n = a_only + b_only
    if n == 0:
        return {"a_only": 0, "b_only": 0, "discordant": 0, "p_exact": 1.0, "p_midp": 1.0}
    p_exact = float(binomtest(a_only, n, 0.5, alternative="two-sided").pvalue)
    k = min(a_only, b_only)
    # mid-p = 2 * (P(X <= k) - P(X = k) / 2) = p_exact - P(X = k) for k < n/2, and 1 when b == c
    p_mid = p_exact - float(binom.pmf(k, n, 0.5)) if 2 * k != n else 1.0
    return {
        "a_only": a_only,
        "b_only": b_only,
        "discordant": n,
        "p_exact": min(1.0, p_exact),
        "p_midp": float(min(1.0, max(0.0, p_mid))),
    }


def rounded(interval: list[float] | None, digits: int = 6) -> list[float] | None:
    """An interval with its ends rounded (None stays None)."""
    if interval is None:
        return None
    return [round(v, digits) if math.isfinite(v) else None for v in interval]
