"""Calibration of a student → teacher cascade on the user's own scored data.

Inputs per query: the router's ``score`` of the student's answer, the student's task score and
the teacher's task score. Sending the ``k`` lowest-scored queries to the teacher gives a blended
quality ``(sum of teacher scores of those k + sum of student scores of the rest) / n``. The
*routing curve* is that quality against the teacher share ``k / n`` at every cut a threshold can
make (tied scores move together). :func:`choose` picks the cut for a target (a quality as a
percentage of the teacher's, and/or a most allowed teacher share); its threshold is the midpoint
between the last routed score and the next one. :func:`apgr` is the area under the normalized
curve (RouteLLM's "average performance gap recovered": 0.5 for random routing, 1 for an oracle
that fixes everything at once). :func:`check` applies a threshold to another split with 95%
intervals: Wilson for the realized teacher share, paired bootstrap for the blended quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..evaluate.stats import paired_bootstrap, rounded
from .features import LOGISTIC_FEATURES

MIN_CLASS = 5  # a logistic router needs at least this many examples of each outcome


def curve(scores: Sequence[float], student: Sequence[float], teacher: Sequence[float]) -> list[dict]:
    """The routing curve: ``[{"share", "quality", "k", "threshold"}]`` from share 0 to 1."""
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(student, dtype=np.float64)
    b = np.asarray(teacher, dtype=np.float64)
    n = s.size
    if n == 0 or a.size != n or b.size != n:
        raise ValueError("curve needs equally long, non-empty scores, student and teacher lists")
    order = np.argsort(s, kind="stable")
    s, gain = s[order], (b - a)[order]
    cum = np.concatenate([[0.0], np.cumsum(gain)])
    base = a.sum()
    cuts = [0] + [k for k in range(1, n) if s[k] > s[k - 1]] + [n]
    points = []
    for k in cuts:
        if k == 0:
            thr = float(s[0])  # nothing scores strictly below the lowest score
        elif k == n:
            thr = float(np.nextafter(s[-1], np.inf))
        else:
            thr = float((s[k - 1] + s[k]) / 2)
        points.append({"k": int(k), "share": k / n, "quality": float((base + cum[k]) / n), "threshold": thr})
    return points


def apgr(points: list[dict]) -> float | None:
    """Area under ``(quality - student) / (teacher - student)`` over the share (trapezoids);
    None when the teacher is not better than the student on this split (no gap to recover)."""
    q0, q1 = points[0]["quality"], points[-1]["quality"]
    if q1 - q0 <= 1e-12:
        return None
    x = np.array([p["share"] for p in points])
    y = (np.array([p["quality"] for p in points]) - q0) / (q1 - q0)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def choose(points: list[dict], target_pct: float | None = None, max_share: float | None = None) -> dict:
    """The chosen point of the curve (a copy with ``met``: whether the target was reached).

    ``target_pct``: the fewest teacher calls whose quality is at least ``target_pct`` % of the
    teacher-only quality. ``max_share``: at most this share of teacher calls. With both, the
    fewest calls meeting the quality within the cap (else the best quality within the cap); with
    only a cap, the best quality within it (fewest calls on ties).
    """
    if target_pct is None and max_share is None:
        raise ValueError("choose needs target_pct or max_share")
    allowed = [p for p in points if max_share is None or p["share"] <= max_share + 1e-12]
    if target_pct is not None:
        need = target_pct / 100.0 * points[-1]["quality"]
        ok = [p for p in allowed if p["quality"] >= need - 1e-12]
        if ok:
            return {**ok[0], "met": True}
    best = max(allowed, key=lambda p: (p["quality"], -p["k"]))
    return {**best, "met": target_pct is None}


def check(
    scores: Sequence[float],
    student: Sequence[float],
    teacher: Sequence[float],
    threshold: float,
    samples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Apply ``threshold`` to a split: realized teacher share and blended quality, each with a 95% interval."""
    from scipy.stats import binomtest  # defers scipy

    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(student, dtype=np.float64)
    b = np.asarray(teacher, dtype=np.float64)
    routed = s < threshold
    blended = np.where(routed, b, a)
    n, k = int(s.size), int(routed.sum())
    share_ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    boot = paired_bootstrap({"blended": blended, "student": a, "teacher": b}, "teacher", samples=samples, seed=seed)
    q_t = float(b.mean())
    return {
        "n": n,
        "teacher_calls": k,
        "share": k / n,
        "share_ci95": rounded([share_ci.low, share_ci.high]),
        "quality": float(blended.mean()),
        "quality_ci95": rounded(boot["blended"]["score"]),
        "pct_of_teacher": 100 * float(blended.mean()) / q_t if q_t else None,
        "pct_of_teacher_ci95": rounded(boot["blended"]["pct_of_teacher"], 3),
        "student_quality": float(a.mean()),
        "teacher_quality": q_t,
        "student_pct_of_teacher": 100 * float(a.mean()) / q_t if q_t else None,
    }


def fit_logistic(feats: list[dict], student: Sequence[float], teacher: Sequence[float], seed: int = 0) -> dict:
    """A logistic router: P(the student's answer scores at least the teacher's) from the features.

    Standardized features, L2 (C=1), balanced class weights. Returns the ``router`` fields of a
    route file (without ``threshold``). Raises ``ValueError`` when either outcome has fewer than
    ``MIN_CLASS`` examples (nothing to learn from).
    """
    from sklearn.linear_model import LogisticRegression  # defers scikit-learn (logistic router only)

    x = np.array([[f[n] for n in LOGISTIC_FEATURES] for f in feats], dtype=np.float64)
    y = (np.asarray(student, dtype=np.float64) >= np.asarray(teacher, dtype=np.float64)).astype(int)
    bad, good = int((y == 0).sum()), int((y == 1).sum())
    if min(bad, good) < MIN_CLASS:
        raise ValueError(
            f"the calibration split has {bad} queries where the student did worse than the teacher "
            f"and {good} where it did not; a logistic router needs at least {MIN_CLASS} of each"
        )
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, class_weight="balanced", random_state=seed, max_iter=1000)
    model.fit((x - mean) / scale, y)
    return {
        "signal": "logistic",
        "features": list(LOGISTIC_FEATURES),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": model.coef_[0].tolist(),
        "intercept": float(model.intercept_[0]),
    }
