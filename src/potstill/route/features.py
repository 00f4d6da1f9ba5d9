"""Confidence signals from the student's own generation, and the router that turns them into a decision.

While the student decodes, every kept token contributes ``(logprob of the chosen token, entropy
of the step's distribution)`` (recorded by :class:`potstill.serve.decode.RowController` for rows
with ``confidence=True``). The prompt is the whole conversation, so in a multi-turn chat every
step is conditioned on all earlier turns and the signals score the answer to the conversation,
not to its last message alone. :func:`features` summarizes the steps:

* ``mean_logprob`` / ``min_logprob``: mean and minimum log-probability of the chosen tokens;
* ``p10`` / ``p25`` / ``p50``: quantiles (linear interpolation) of the chosen tokens' probabilities;
* ``mean_entropy`` / ``max_entropy``: entropy in nats of the step distributions;
* ``tokens``: the number of kept tokens.

A :class:`Router` maps the features to one *score* (higher: the student is more likely right)
and sends a query to the teacher when ``score < threshold``. Signals: one of the features
(entropies negated, so higher is still more confident) or ``logistic``, a logistic regression
fitted on the calibration split (:func:`potstill.route.calibrate.fit_logistic`) whose score is
the predicted probability that the student's answer is as good as the teacher's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FEATURES = ("mean_logprob", "min_logprob", "p10", "p25", "p50", "mean_entropy", "max_entropy", "tokens")
SIGNALS = ("mean_logprob", "min_logprob", "p10", "p25", "p50", "neg_mean_entropy", "neg_max_entropy", "logistic")
LOGISTIC_FEATURES = ("mean_logprob", "min_logprob", "p10", "p50", "mean_entropy", "max_entropy")
EMPTY_LOGPROB = -50.0  # an answer with no kept token is treated as a maximally unsure one
EMPTY_ENTROPY = 50.0


def features(steps: Sequence[tuple[float, float]]) -> dict[str, float]:
    """The confidence features of one answer from its ``(logprob, entropy)`` steps."""
    if not steps:
        return {
            "mean_logprob": EMPTY_LOGPROB,
            "min_logprob": EMPTY_LOGPROB,
            "p10": 0.0,
            "p25": 0.0,
            "p50": 0.0,
            "mean_entropy": EMPTY_ENTROPY,
            "max_entropy": EMPTY_ENTROPY,
            "tokens": 0.0,
        }
    lp = np.maximum(np.array([s[0] for s in steps], dtype=np.float64), EMPTY_LOGPROB)
    ent = np.array([s[1] for s in steps], dtype=np.float64)
    p10, p25, p50 = np.quantile(np.exp(lp), [0.10, 0.25, 0.50])
    return {
        "mean_logprob": float(lp.mean()),
        "min_logprob": float(lp.min()),
        "p10": float(p10),
        "p25": float(p25),
        "p50": float(p50),
        "mean_entropy": float(ent.mean()),
        "max_entropy": float(ent.max()),
        "tokens": float(len(steps)),
    }


class Router:
    """Scores answers and decides who answers: ``score < threshold`` goes to the teacher.

    ``spec`` is the ``router`` object of a route file: ``{"signal", "threshold"}`` plus, for
    ``logistic``, ``{"features", "mean", "scale", "coef", "intercept"}``.
    """

    def __init__(self, spec: dict):
        self.signal = spec["signal"]
        if self.signal not in SIGNALS:
            raise ValueError(f"unknown routing signal {self.signal!r} (known: {', '.join(SIGNALS)})")
        self.threshold = float(spec["threshold"])
        if self.signal == "logistic":
            self.names = list(spec["features"])
            self.mean = np.array(spec["mean"], dtype=np.float64)
            self.scale = np.array(spec["scale"], dtype=np.float64)
            self.coef = np.array(spec["coef"], dtype=np.float64)
            self.intercept = float(spec["intercept"])
            if not (len(self.names) == len(self.mean) == len(self.scale) == len(self.coef)):
                raise ValueError("logistic router: features, mean, scale and coef differ in length")

    def score(self, feats: dict[str, float]) -> float:
        """Confidence that the student's answer is good enough (higher: more confident)."""
        if self.signal == "logistic":
            x = (np.array([feats[n] for n in self.names]) - self.mean) / self.scale
            z = float(x @ self.coef + self.intercept)
            return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
        if self.signal.startswith("neg_"):
            return -feats[self.signal[4:]]
        return feats[self.signal]

    def to_teacher(self, score: float) -> bool:
        return score < self.threshold
